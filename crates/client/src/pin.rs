//! Trusting an agent by the SHA-256 fingerprint of its certificate, like ssh trusts a host key:
//! the `Fingerprint` type, the rustls verifier that checks it during the handshake, and the
//! `known_agents` file that remembers it.
//!
//! It does not use certificate authorities: an agent's API certificate is self-signed (or one the
//! operator gave), and the pin is the whole trust. The verifier still checks the handshake
//! signature, so only the holder of the pinned certificate's key can complete a connection.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest as _, Sha256};

/// The SHA-256 of a certificate's DER bytes, written `sha256:<64 lowercase hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of_der(der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(der).into())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A fingerprint that does not read as `sha256:` and 64 hex digits.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid certificate fingerprint `{0}`; expected `sha256:` and 64 hex digits (colons allowed), as `rollway agent` prints it"
)]
pub struct BadFingerprint(pub String);

impl FromStr for Fingerprint {
    type Err = BadFingerprint;

    fn from_str(text: &str) -> Result<Fingerprint, BadFingerprint> {
        let bad = || BadFingerprint(text.to_owned());
        let trimmed = text.trim();
        let hex_part = trimmed
            .strip_prefix("sha256:")
            .or_else(|| trimmed.strip_prefix("SHA256:"))
            .ok_or_else(bad)?;
        let digits: String = hex_part.chars().filter(|c| *c != ':').collect();
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(&digits, &mut bytes).map_err(|_| bad())?;
        Ok(Fingerprint(bytes))
    }
}

impl serde::Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Fingerprint, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Accepts exactly the certificate whose fingerprint is `expected` (none when `None`), and records
/// the fingerprint the server presented, so a refusal can say what it saw.
#[derive(Debug)]
pub struct PinVerifier {
    expected: Option<Fingerprint>,
    presented: Arc<Mutex<Option<Fingerprint>>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinVerifier {
    pub fn new(expected: Option<Fingerprint>) -> PinVerifier {
        PinVerifier {
            expected,
            presented: Arc::new(Mutex::new(None)),
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        }
    }

    /// Where the last presented fingerprint is kept (shared with the client that uses this).
    pub fn presented(&self) -> Arc<Mutex<Option<Fingerprint>>> {
        self.presented.clone()
    }

    /// A rustls client configuration that trusts only this pin.
    pub fn client_config(self: Arc<Self>) -> Result<rustls::ClientConfig, rustls::Error> {
        Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(self)
        .with_no_client_auth())
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = Fingerprint::of_der(end_entity.as_ref());
        if let Ok(mut slot) = self.presented.lock() {
            *slot = Some(presented);
        }
        if self.expected == Some(presented) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The user's pinned agents: one `HOST:PORT sha256:HEX` line each, like ssh's `known_hosts`.
#[derive(Debug, Clone, Default)]
pub struct KnownAgents {
    path: PathBuf,
    entries: Vec<(String, Fingerprint)>,
}

#[derive(Debug, thiserror::Error)]
pub enum KnownAgentsError {
    #[error("cannot read `{path}`")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write `{path}`")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{path}` line {line}: {problem}; expected `HOST:PORT sha256:HEX`")]
    Line {
        path: String,
        line: usize,
        problem: String,
    },
}

impl KnownAgents {
    /// `$ROLLWAY_KNOWN_AGENTS`, else `$XDG_CONFIG_HOME/rollway/known_agents`, else
    /// `~/.config/rollway/known_agents`.
    pub fn default_path() -> PathBuf {
        if let Some(path) = std::env::var_os("ROLLWAY_KNOWN_AGENTS").filter(|p| !p.is_empty()) {
            return PathBuf::from(path);
        }
        let config = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                std::env::var_os("HOME")
                    .map_or_else(|| PathBuf::from("."), PathBuf::from)
                    .join(".config")
            });
        config.join("rollway").join("known_agents")
    }

    /// The file at `path`; a missing file is an empty list.
    pub fn load(path: &Path) -> Result<KnownAgents, KnownAgentsError> {
        let display = || path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(KnownAgentsError::Read {
                    path: display(),
                    source,
                });
            }
        };
        let mut entries = Vec::new();
        for (idx, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(authority), Some(fingerprint), None) =
                (words.next(), words.next(), words.next())
            else {
                return Err(KnownAgentsError::Line {
                    path: display(),
                    line: idx + 1,
                    problem: "not two words".to_owned(),
                });
            };
            let fingerprint =
                fingerprint
                    .parse::<Fingerprint>()
                    .map_err(|error| KnownAgentsError::Line {
                        path: display(),
                        line: idx + 1,
                        problem: error.to_string(),
                    })?;
            entries.push((authority.to_ascii_lowercase(), fingerprint));
        }
        Ok(KnownAgents {
            path: path.to_owned(),
            entries,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pin of `authority` (`host:port`).
    pub fn get(&self, authority: &str) -> Option<Fingerprint> {
        let authority = authority.to_ascii_lowercase();
        self.entries
            .iter()
            .find(|(known, _)| *known == authority)
            .map(|(_, fingerprint)| *fingerprint)
    }

    /// Pins `authority` to `fingerprint` and writes the file (0600, its folder made if missing).
    pub fn insert(
        &mut self,
        authority: &str,
        fingerprint: Fingerprint,
    ) -> Result<(), KnownAgentsError> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let authority = authority.to_ascii_lowercase();
        self.entries.retain(|(known, _)| *known != authority);
        self.entries.push((authority, fingerprint));
        let write_error = |source| KnownAgentsError::Write {
            path: self.path.display().to_string(),
            source,
        };
        if let Some(parent) = self.path.parent() {
            std::fs::create_dir_all(parent).map_err(write_error)?;
        }
        let mut text = String::from(
            "# Agents this user trusts, by the SHA-256 of their API certificate (rollway).\n",
        );
        for (known, fingerprint) in &self.entries {
            text.push_str(&format!("{known} {fingerprint}\n"));
        }
        let temp = self.path.with_extension("tmp");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&temp)
            .map_err(write_error)?;
        file.write_all(text.as_bytes()).map_err(write_error)?;
        std::fs::rename(&temp, &self.path).map_err(write_error)
    }
}

#[cfg(test)]
mod tests;
