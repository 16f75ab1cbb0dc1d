//! The credentials of the registry the agent runs for the cluster, as the master key sealed them.
//! It knows rows, not ciphers nor HTTP (see `crate::registry`).

use rusqlite::{OptionalExtension, params};

use super::{SealedSecret, Store, StoreError};

/// Who a registry credential is for: the agent's pushes, or the nodes' pulls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryAccess {
    Push,
    Pull,
}

impl RegistryAccess {
    pub fn as_str(self) -> &'static str {
        match self {
            RegistryAccess::Push => "push",
            RegistryAccess::Pull => "pull",
        }
    }
}

impl Store {
    /// The credential for `access`: user name and sealed password, if one was made.
    pub fn registry_credential(
        &self,
        access: RegistryAccess,
    ) -> Result<Option<(String, SealedSecret)>, StoreError> {
        let connection = self.connection();
        connection
            .query_row(
                "SELECT username, nonce, ciphertext FROM registry_credentials WHERE access = ?1",
                params![access.as_str()],
                |row| {
                    Ok((
                        row.get(0)?,
                        SealedSecret {
                            nonce: row.get(1)?,
                            ciphertext: row.get(2)?,
                        },
                    ))
                },
            )
            .optional()
            .map_err(|source| {
                self.error(
                    "read a registry credential",
                    format!("the {} credential", access.as_str()),
                    source,
                )
            })
    }

    /// Keeps the credential for `access` unless one is there already (two first starts agree).
    pub fn keep_registry_credential(
        &self,
        access: RegistryAccess,
        username: &str,
        sealed: &SealedSecret,
        now: i64,
    ) -> Result<(), StoreError> {
        let connection = self.connection();
        connection
            .execute(
                "INSERT OR IGNORE INTO registry_credentials (access, username, nonce, ciphertext, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![access.as_str(), username, sealed.nonce, sealed.ciphertext, now],
            )
            .map_err(|source| {
                self.error(
                    "keep a registry credential",
                    format!("the {} credential", access.as_str()),
                    source,
                )
            })?;
        Ok(())
    }
}
