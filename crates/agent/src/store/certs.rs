//! Certificate rows and ACME accounts: sealed bytes only (the agent's `certs` module seals, opens
//! and decides). It knows rows, not renewal rules.

use rusqlite::{OptionalExtension, Row, params};

use super::{SealedSecret, Store, StoreError};

/// Where a host's certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertSource {
    /// Issued by the agent's ACME server; renewed by the agent.
    Acme,
    /// Given as secrets of the environment (`tls = { cert, key }`); renewed by whoever gave it.
    Given,
}

impl CertSource {
    pub fn as_str(self) -> &'static str {
        match self {
            CertSource::Acme => "acme",
            CertSource::Given => "given",
        }
    }

    fn parse(text: &str) -> Option<CertSource> {
        match text {
            "acme" => Some(CertSource::Acme),
            "given" => Some(CertSource::Given),
            _ => None,
        }
    }
}

/// One host's certificate: the public chain, the sealed key, and what renewal needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRecord {
    pub host: String,
    pub source: CertSource,
    pub app: String,
    pub environment: String,
    pub chain_pem: String,
    pub key: SealedSecret,
    pub issuer: String,
    /// Unix ms.
    pub not_before: i64,
    /// Unix ms.
    pub not_after: i64,
    /// When this certificate was stored (issued or given), unix ms.
    pub renewed_at: i64,
    /// The last failed renewal's reason, until one succeeds.
    pub last_error: Option<String>,
    /// Failed renewals in a row (the backoff doubles with each).
    pub failures: u32,
    /// No renewal attempt before this (backoff, the ACME server's Retry-After), unix ms.
    pub next_attempt_at: Option<i64>,
}

const SELECT: &str = "SELECT host, source, app, environment, chain_pem, key_nonce, key_sealed, issuer, \
     not_before, not_after, renewed_at, last_error, next_attempt_at, failures FROM certificates";

fn cert_from_row(row: &Row<'_>) -> rusqlite::Result<CertRecord> {
    let source: String = row.get(1)?;
    Ok(CertRecord {
        host: row.get(0)?,
        source: CertSource::parse(&source).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                1,
                rusqlite::types::Type::Text,
                format!("unknown certificate source `{source}`").into(),
            )
        })?,
        app: row.get(2)?,
        environment: row.get(3)?,
        chain_pem: row.get(4)?,
        key: SealedSecret {
            nonce: row.get(5)?,
            ciphertext: row.get(6)?,
        },
        issuer: row.get(7)?,
        not_before: row.get(8)?,
        not_after: row.get(9)?,
        renewed_at: row.get(10)?,
        last_error: row.get(11)?,
        next_attempt_at: row.get(12)?,
        failures: row.get(13)?,
    })
}

impl Store {
    /// Stores a host's new certificate, replacing the previous one and clearing its renewal error.
    pub fn put_cert(&self, record: &CertRecord) -> Result<(), StoreError> {
        let connection = self.connection();
        connection
            .execute(
                "INSERT INTO certificates (host, source, app, environment, chain_pem, key_nonce, key_sealed,
                     issuer, not_before, not_after, renewed_at, last_error, next_attempt_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, NULL, NULL)
                 ON CONFLICT (host) DO UPDATE SET source = excluded.source, app = excluded.app,
                     environment = excluded.environment, chain_pem = excluded.chain_pem,
                     key_nonce = excluded.key_nonce, key_sealed = excluded.key_sealed,
                     issuer = excluded.issuer, not_before = excluded.not_before,
                     not_after = excluded.not_after, renewed_at = excluded.renewed_at,
                     last_error = NULL, next_attempt_at = NULL, failures = 0",
                params![
                    record.host,
                    record.source.as_str(),
                    record.app,
                    record.environment,
                    record.chain_pem,
                    record.key.nonce,
                    record.key.ciphertext,
                    record.issuer,
                    record.not_before,
                    record.not_after,
                    record.renewed_at,
                ],
            )
            .map_err(|source| {
                self.error(
                    "store a certificate",
                    format!("host `{}`", record.host),
                    source,
                )
            })?;
        Ok(())
    }

    /// Records a failed renewal: its reason and the earliest next attempt.
    pub fn note_cert_failure(
        &self,
        host: &str,
        error: &str,
        next_attempt_at: i64,
    ) -> Result<(), StoreError> {
        let connection = self.connection();
        connection
            .execute(
                "UPDATE certificates SET last_error = ?2, next_attempt_at = ?3, failures = failures + 1
                 WHERE host = ?1",
                params![host, error, next_attempt_at],
            )
            .map_err(|source| {
                self.error(
                    "record a renewal failure",
                    format!("host `{host}`"),
                    source,
                )
            })?;
        Ok(())
    }

    /// Forgets `host`'s certificate (its route no longer has `tls`, or the host left the routes).
    pub fn delete_cert(&self, host: &str) -> Result<bool, StoreError> {
        let connection = self.connection();
        connection
            .execute("DELETE FROM certificates WHERE host = ?1", params![host])
            .map(|deleted| deleted > 0)
            .map_err(|source| self.error("delete a certificate", format!("host `{host}`"), source))
    }

    pub fn cert(&self, host: &str) -> Result<Option<CertRecord>, StoreError> {
        let connection = self.connection();
        connection
            .query_row(&format!("{SELECT} WHERE host = ?1"), params![host], |row| {
                cert_from_row(row)
            })
            .optional()
            .map_err(|source| self.error("read a certificate", format!("host `{host}`"), source))
    }

    /// Every certificate, by host.
    pub fn certs(&self) -> Result<Vec<CertRecord>, StoreError> {
        let connection = self.connection();
        let subject = || "certificates".to_owned();
        let mut statement = connection
            .prepare(&format!("{SELECT} ORDER BY host"))
            .map_err(|source| self.error("list certificates", subject(), source))?;
        let rows = statement
            .query_map([], cert_from_row)
            .map_err(|source| self.error("list certificates", subject(), source))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|source| self.error("list certificates", subject(), source))
    }

    /// The sealed credentials of the ACME account on `directory`, if one was made.
    pub fn acme_account(&self, directory: &str) -> Result<Option<SealedSecret>, StoreError> {
        let connection = self.connection();
        connection
            .query_row(
                "SELECT credentials_nonce, credentials_sealed FROM acme_accounts WHERE directory = ?1",
                params![directory],
                |row| {
                    Ok(SealedSecret {
                        nonce: row.get(0)?,
                        ciphertext: row.get(1)?,
                    })
                },
            )
            .optional()
            .map_err(|source| {
                self.error(
                    "read the ACME account",
                    format!("directory `{directory}`"),
                    source,
                )
            })
    }

    pub fn put_acme_account(
        &self,
        directory: &str,
        sealed: &SealedSecret,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let connection = self.connection();
        connection
            .execute(
                "INSERT INTO acme_accounts (directory, credentials_nonce, credentials_sealed, created_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (directory) DO UPDATE SET credentials_nonce = excluded.credentials_nonce,
                     credentials_sealed = excluded.credentials_sealed",
                params![directory, sealed.nonce, sealed.ciphertext, now_ms],
            )
            .map_err(|source| {
                self.error(
                    "store the ACME account",
                    format!("directory `{directory}`"),
                    source,
                )
            })?;
        Ok(())
    }
}
