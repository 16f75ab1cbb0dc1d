//! Tokens: their hashes and roles, never their plaintext.

use rusqlite::{OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

use crate::tokens::Role;

use super::{Store, StoreError, now_ms};

/// A token as stored: its hash, never its plaintext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub role: Role,
    /// SHA-256 hex of the plaintext (`tokens::hash`).
    pub hash: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

impl Store {
    pub fn insert_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        self.connection()
            .execute(
                &format!("INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
                params![
                    token.id,
                    token.name,
                    token.role.as_str(),
                    token.hash,
                    token.created_at,
                    token.revoked_at,
                ],
            )
            .map_err(|source| self.error("insert a token", token_subject(&token.id), source))?;
        Ok(())
    }

    /// The token stored under `hash`, revoked or not (`tokens::verify` skips revoked ones).
    pub fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        const OPERATION: &str = "look up a token";
        // The subject never shows the hash: an error message is no place for it.
        let subject = || "a presented token".to_owned();
        let connection = self.connection();
        let row = connection
            .query_row(
                &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE hash = ?1"),
                params![hash],
                TokenRow::from_row,
            )
            .optional()
            .map_err(|source| self.error(OPERATION, subject(), source))?;
        row.map(|row| row.into_token(OPERATION, subject()))
            .transpose()
    }

    /// Every token, revoked ones included, oldest first.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        const OPERATION: &str = "list tokens";
        let rows = self
            .query_rows(
                &format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at, id"),
                [],
                TokenRow::from_row,
            )
            .map_err(|source| self.error(OPERATION, self.subject(), source))?;
        rows.into_iter()
            .map(|row| row.into_token(OPERATION, self.subject()))
            .collect()
    }

    /// Revokes token `id`; says whether it existed and was not revoked yet.
    pub fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        let n_changed = self
            .connection()
            .execute(
                "UPDATE tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, now_ms()],
            )
            .map_err(|source| self.error("revoke a token", token_subject(id), source))?;
        Ok(n_changed > 0)
    }

    /// How many tokens exist, revoked ones included.
    pub fn count_tokens(&self) -> Result<u64, StoreError> {
        self.connection()
            .query_row("SELECT COUNT(*) FROM tokens", [], |row| row.get(0))
            .map_err(|source| self.error("count tokens", self.subject(), source))
    }
}

const TOKEN_COLUMNS: &str = "id, name, role, hash, created_at, revoked_at";

/// A token row as stored, before its role is parsed.
struct TokenRow {
    token: TokenRecord,
    role: String,
}

impl TokenRow {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<TokenRow> {
        Ok(TokenRow {
            token: TokenRecord {
                id: row.get(0)?,
                name: row.get(1)?,
                role: Role::Viewer,
                hash: row.get(3)?,
                created_at: row.get(4)?,
                revoked_at: row.get(5)?,
            },
            role: row.get(2)?,
        })
    }

    fn into_token(
        self,
        operation: &'static str,
        subject: String,
    ) -> Result<TokenRecord, StoreError> {
        let role = self.role.parse().map_err(|_| StoreError::Corrupt {
            operation,
            subject,
            value: self.role.clone(),
        })?;
        Ok(TokenRecord { role, ..self.token })
    }
}

fn token_subject(id: &str) -> String {
    format!("token `{id}`")
}
