//! Bearer tokens of the control API: roles, generation, hashing and verification.
//! Only the SHA-256 hash of a token is stored; the plaintext exists once, when it is issued.
//! This module does not read HTTP headers or map failures to responses: the API layer does.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::{Store, StoreError, TokenRecord};

/// What a token may do. The people's roles are a ladder (viewer < deployer < approver < admin):
/// each allows everything the roles below it allow. `Proxy` is beside the ladder: a proxy token
/// allows only the proxy routes (follow the desired routing, report counters), and no other role
/// allows those, not even admin (`allows`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A proxy that follows the agent (`rollway proxy --follow`): reads the desired routing and
    /// reports its counters, nothing else. Declared first so a stray `>=` grants it nothing.
    Proxy,
    /// Reads status, releases, events and logs.
    Viewer,
    /// Also deploys, rolls back, promotes and aborts.
    Deployer,
    /// Also approves deployments held at an approval gate (never one its own token started).
    Approver,
    /// Also manages tokens, secrets, backup restores and locks.
    Admin,
}

/// The plaintext of a token. It prints as `rwy_***` and is not `Serialize`; `expose` is the
/// explicit way to read it (to show it once to whoever created it).
#[derive(Clone, PartialEq, Eq)]
pub struct PlainToken(String);

/// The SHA-256 hex digest of a token's plaintext: what the store keeps and looks up.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenHash(String);

/// The prefix of every token, so that secret scanners and humans recognise one.
pub const TOKEN_PREFIX: &str = "rwy_";

/// A string that is not one of `viewer`, `deployer`, `approver` or `admin`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role `{0}`, expected `viewer`, `deployer`, `approver`, `admin` or `proxy`")]
pub struct ParseRoleError(pub String);

impl Role {
    /// Every role: the ladder lowest first, then `Proxy`.
    pub const ALL: [Role; 5] = [
        Role::Viewer,
        Role::Deployer,
        Role::Approver,
        Role::Admin,
        Role::Proxy,
    ];

    /// Whether a token with this role may do something that needs `needed`: on the ladder, this
    /// role or a higher one; a proxy route, a proxy token only (and a proxy token nothing else).
    pub fn allows(&self, needed: Role) -> bool {
        match (self, needed) {
            (Role::Proxy, Role::Proxy) => true,
            (Role::Proxy, _) | (_, Role::Proxy) => false,
            _ => *self >= needed,
        }
    }

    /// Whether this role is one of people (viewer to admin): what may sign in to the dashboard.
    pub fn is_person(&self) -> bool {
        *self != Role::Proxy
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Deployer => "deployer",
            Role::Approver => "approver",
            Role::Admin => "admin",
            Role::Proxy => "proxy",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = ParseRoleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "deployer" => Ok(Role::Deployer),
            "approver" => Ok(Role::Approver),
            "admin" => Ok(Role::Admin),
            "proxy" => Ok(Role::Proxy),
            other => Err(ParseRoleError(other.to_owned())),
        }
    }
}

impl PlainToken {
    /// The plaintext. Call it only to hand the token to the person who created it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PlainToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TOKEN_PREFIX}***")
    }
}

impl fmt::Display for PlainToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TOKEN_PREFIX}***")
    }
}

impl TokenHash {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A new token: `rwy_` followed by 32 random bytes in hex, and its hash.
///
/// # Panics
///
/// If the operating system cannot supply random bytes: no token is safe without them, and
/// Linux's `getrandom(2)` blocks rather than fail once the system has booted.
pub fn generate() -> (PlainToken, TokenHash) {
    let plain = PlainToken(format!(
        "{TOKEN_PREFIX}{}",
        hex::encode(random_bytes::<32>())
    ));
    let token_hash = hash(plain.expose());
    (plain, token_hash)
}

/// The hash under which a presented token would be stored.
pub fn hash(presented: &str) -> TokenHash {
    TokenHash(hex::encode(Sha256::digest(presented.as_bytes())))
}

/// The record of a presented token, if it was issued and is not revoked.
///
/// Fails closed: a store error is logged and the token is refused. Use `try_verify` to tell
/// the two apart.
pub fn verify(store: &Store, presented: &str) -> Option<TokenRecord> {
    match try_verify(store, presented) {
        Ok(record) => record,
        Err(error) => {
            tracing::error!(message = "Cannot look up a presented token.", %error);
            None
        }
    }
}

/// `verify`, with store errors returned.
///
/// The lookup is by hash, through a unique index. That is not a constant-time comparison, but
/// an attacker timing it learns about the hash of a 256-bit random string, not the string.
pub fn try_verify(store: &Store, presented: &str) -> Result<Option<TokenRecord>, StoreError> {
    if !presented.starts_with(TOKEN_PREFIX) {
        return Ok(None);
    }
    let record = store.token_by_hash(hash(presented).as_str())?;
    Ok(record.filter(|record| record.revoked_at.is_none()))
}

/// Generates a token and stores its hash under a new id (`t-` and 16 hex digits), stamped with
/// the system clock. Returns the record and the plaintext, which is never available again.
///
/// # Panics
///
/// As `generate`, if the operating system cannot supply random bytes.
pub fn create(
    store: &Store,
    name: &str,
    role: Role,
) -> Result<(TokenRecord, PlainToken), StoreError> {
    let (plain, token_hash) = generate();
    let record = TokenRecord {
        id: format!("t-{}", hex::encode(random_bytes::<8>())),
        name: name.to_owned(),
        role,
        hash: token_hash.into_string(),
        created_at: now_ms(),
        revoked_at: None,
    };
    store.insert_token(&record)?;
    Ok((record, plain))
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    if let Err(error) = getrandom::fill(&mut bytes) {
        panic!("the operating system cannot supply random bytes for a token: {error}");
    }
    bytes
}

fn now_ms() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
