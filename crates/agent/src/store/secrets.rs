//! Secret versions in the store: sealed bytes only (the agent's `secrets` module seals and opens).

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::{Store, StoreError};

/// A sealed secret value as stored: XChaCha20-Poly1305 nonce and ciphertext.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedSecret {
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl std::fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedSecret({} bytes)", self.ciphertext.len())
    }
}

/// What `rollway secrets list` shows: never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretMeta {
    pub name: String,
    pub version: u64,
    pub created_by: String,
    pub created_at: i64,
}

/// A row's nonce and ciphertext; both NULL for an unset.
type NonceAndCiphertext = (Option<Vec<u8>>, Option<Vec<u8>>);

impl Store {
    /// Adds a new version of `name`, sealed by `seal` for that version inside the same transaction
    /// (so the version in the AEAD's associated data is the one written); `None` records an unset.
    pub fn put_secret(
        &self,
        app: &str,
        env: &str,
        name: &str,
        seal: &dyn Fn(u64) -> Option<SealedSecret>,
        created_by: &str,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let subject = format!("secret `{name}` of `{app}` in `{env}`");
        let mut connection = self.connection();
        let transaction = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|source| self.error("write a secret", subject.clone(), source))?;
        let last: Option<i64> = transaction
            .query_row(
                "SELECT MAX(version) FROM secrets WHERE app = ?1 AND environment = ?2 AND name = ?3",
                params![app, env, name],
                |row| row.get(0),
            )
            .map_err(|source| self.error("write a secret", subject.clone(), source))?;
        let version = last.unwrap_or(0) + 1;
        let sealed = seal(u64::try_from(version).unwrap_or(0));
        let sealed = sealed.as_ref();
        transaction
            .execute(
                "INSERT INTO secrets (app, environment, name, version, nonce, ciphertext, created_by, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    app,
                    env,
                    name,
                    version,
                    sealed.map(|sealed| sealed.nonce.as_slice()),
                    sealed.map(|sealed| sealed.ciphertext.as_slice()),
                    created_by,
                    now_ms
                ],
            )
            .map_err(|source| self.error("write a secret", subject.clone(), source))?;
        transaction
            .commit()
            .map_err(|source| self.error("write a secret", subject, source))?;
        Ok(u64::try_from(version).unwrap_or(0))
    }

    /// The latest version of every secret of (app, env) that is set (unset ones are left out).
    pub fn current_secrets(&self, app: &str, env: &str) -> Result<Vec<SecretMeta>, StoreError> {
        let subject = format!("secrets of `{app}` in `{env}`");
        let connection = self.connection();
        let mut statement = connection
            .prepare(
                "SELECT s.name, s.version, s.created_by, s.created_at, s.ciphertext IS NOT NULL
                 FROM secrets s
                 JOIN (SELECT name, MAX(version) AS version FROM secrets
                       WHERE app = ?1 AND environment = ?2 GROUP BY name) latest
                   ON latest.name = s.name AND latest.version = s.version
                 WHERE s.app = ?1 AND s.environment = ?2
                 ORDER BY s.name",
            )
            .map_err(|source| self.error("list secrets", subject.clone(), source))?;
        let rows = statement
            .query_map(params![app, env], |row| {
                Ok((
                    SecretMeta {
                        name: row.get(0)?,
                        version: u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
                        created_by: row.get(2)?,
                        created_at: row.get(3)?,
                    },
                    row.get::<_, bool>(4)?,
                ))
            })
            .map_err(|source| self.error("list secrets", subject.clone(), source))?;
        let mut metas = Vec::new();
        for row in rows {
            let (meta, set) =
                row.map_err(|source| self.error("list secrets", subject.clone(), source))?;
            if set {
                metas.push(meta);
            }
        }
        Ok(metas)
    }

    /// Every sealed version of every secret of (app, env), unsets left out: what the scrubber
    /// hides, since a rollback can bring any of them back.
    pub fn all_secret_versions(
        &self,
        app: &str,
        env: &str,
    ) -> Result<Vec<(String, u64, SealedSecret)>, StoreError> {
        let subject = format!("secrets of `{app}` in `{env}`");
        let connection = self.connection();
        let mut statement = connection
            .prepare(
                "SELECT name, version, nonce, ciphertext FROM secrets
                 WHERE app = ?1 AND environment = ?2 AND ciphertext IS NOT NULL
                 ORDER BY name, version",
            )
            .map_err(|source| self.error("read secrets", subject.clone(), source))?;
        let rows = statement
            .query_map(params![app, env], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
                    SealedSecret {
                        nonce: row.get(2)?,
                        ciphertext: row.get(3)?,
                    },
                ))
            })
            .map_err(|source| self.error("read secrets", subject.clone(), source))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|source| self.error("read secrets", subject, source))
    }

    /// One sealed version; `None` when it does not exist or is an unset.
    pub fn secret_version(
        &self,
        app: &str,
        env: &str,
        name: &str,
        version: u64,
    ) -> Result<Option<SealedSecret>, StoreError> {
        let subject = format!("secret `{name}` version {version} of `{app}` in `{env}`");
        let connection = self.connection();
        let row: Option<NonceAndCiphertext> = connection
            .query_row(
                "SELECT nonce, ciphertext FROM secrets WHERE app = ?1 AND environment = ?2 AND name = ?3 AND version = ?4",
                params![app, env, name, i64::try_from(version).unwrap_or(i64::MAX)],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(|source| self.error("read a secret", subject, source))?;
        Ok(match row {
            Some((Some(nonce), Some(ciphertext))) => Some(SealedSecret { nonce, ciphertext }),
            _ => None,
        })
    }
}
