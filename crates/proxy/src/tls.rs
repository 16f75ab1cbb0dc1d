//! HTTPS: the certificates the TLS listener serves, chosen per host by SNI, and the ACME challenge
//! answers (HTTP-01 on the plain listener, TLS-ALPN-01 on the TLS one).
//!
//! The agent sends the whole set (`TlsState`) on the control socket (`PUT /v1/tls`); it replaces the
//! served set in one `ArcSwap` store, so a handshake in progress keeps the certificate it resolved and
//! the next one gets the new set: no connection is dropped by a swap. The set holds private keys, so it
//! is never written to a file: a restarted proxy serves no certificate until the agent sends the set
//! again (its supervisor does at once), and a successor taking over fetches it from its predecessor over
//! the control socket (`GET /v1/tls`, the socket is 0600).
//!
//! It does not obtain, renew or store certificates (the agent does) and does not parse them beyond what
//! rustls needs to serve them.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};

/// The ALPN protocol id of the TLS-ALPN-01 challenge (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The path prefix of HTTP-01 challenges (RFC 8555 section 8.3); never redirected to HTTPS.
pub const ACME_HTTP_PREFIX: &str = "/.well-known/acme-challenge/";

/// Everything the TLS side serves, as the agent sends it. Whole, like `DesiredState`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsState {
    #[serde(default)]
    pub certificates: Vec<TlsCertificate>,
    /// HTTP-01: answers for `/.well-known/acme-challenge/<token>` on the plain listener.
    #[serde(default)]
    pub http01: Vec<Http01Answer>,
    /// TLS-ALPN-01: the challenge certificate for a host, served to `acme-tls/1` handshakes only.
    #[serde(default)]
    pub tls_alpn01: Vec<TlsCertificate>,
}

/// A certificate chain and its private key, both PEM, for the hosts it serves.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsCertificate {
    /// Lower-case host names; `*.example.com` serves one label under `example.com`.
    pub hosts: Vec<String>,
    pub chain_pem: String,
    pub key_pem: String,
}

/// One HTTP-01 challenge: the token in the path, and the key authorization to answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http01Answer {
    pub token: String,
    pub key_authorization: String,
}

// Never print a key: the derived Debug would.
impl fmt::Debug for TlsCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsCertificate")
            .field("hosts", &self.hosts)
            .field("chain_pem_bytes", &self.chain_pem.len())
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl fmt::Debug for TlsState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsState")
            .field("certificates", &self.certificates)
            .field("http01", &self.http01.len())
            .field("tls_alpn01", &self.tls_alpn01)
            .finish()
    }
}

/// Why a certificate cannot be served. Names the hosts, never the key's bytes.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the certificate for {hosts} has no PEM `CERTIFICATE` block")]
    NoCertificate { hosts: String },
    #[error("the certificate chain for {hosts} is not PEM: {reason}")]
    BadChain { hosts: String, reason: String },
    #[error(
        "the private key for {hosts} is not a PEM private key (`PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`): {reason}"
    )]
    BadKey { hosts: String, reason: String },
    #[error("the private key for {hosts} is of a type that cannot sign: {reason}")]
    UnusableKey { hosts: String, reason: String },
    #[error("the private key for {hosts} does not belong to its certificate: {reason}")]
    Mismatch { hosts: String, reason: String },
    #[error("a certificate names no host")]
    NoHost,
}

/// Parses one chain and key into what rustls serves, checking the key signs for the certificate.
pub fn certified_key(certificate: &TlsCertificate) -> Result<Arc<CertifiedKey>, TlsError> {
    certified_key_from_pem(
        &certificate.hosts,
        certificate.chain_pem.as_bytes(),
        certificate.key_pem.as_bytes(),
    )
}

/// As `certified_key`, from PEM bytes; `hosts` only names the certificate in errors.
pub fn certified_key_from_pem(
    hosts: &[String],
    chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<CertifiedKey>, TlsError> {
    parse_certified_key(hosts, chain_pem, key_pem, true)
}

/// `check_match`: whether to prove the key belongs to the certificate; a TLS-ALPN-01 challenge
/// certificate cannot be checked (webpki refuses its critical acmeIdentifier extension) and is made
/// by the agent with its key anyway.
fn parse_certified_key(
    hosts: &[String],
    chain_pem: &[u8],
    key_pem: &[u8],
    check_match: bool,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let named = || {
        if hosts.is_empty() {
            "no host".to_owned()
        } else {
            hosts.join(", ")
        }
    };
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::BadChain {
            hosts: named(),
            reason: error.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { hosts: named() });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|error| TlsError::BadKey {
        hosts: named(),
        // The error names the PEM section, never its bytes.
        reason: error.to_string(),
    })?;
    let signing = any_supported_type(&key).map_err(|error| TlsError::UnusableKey {
        hosts: named(),
        reason: error.to_string(),
    })?;
    let certified = CertifiedKey::new(chain, signing);
    if check_match {
        certified.keys_match().map_err(|error| TlsError::Mismatch {
            hosts: named(),
            reason: error.to_string(),
        })?;
    }
    Ok(Arc::new(certified))
}

/// The served set: a snapshot swapped whole.
#[derive(Debug, Default)]
struct Served {
    by_host: HashMap<String, Arc<CertifiedKey>>,
    alpn_challenges: HashMap<String, Arc<CertifiedKey>>,
    http01: HashMap<String, String>,
    /// The last set accepted, to hand to a successor process.
    state: TlsState,
}

/// The proxy's TLS side: the certificate resolver of its TLS listener and the challenge answers.
#[derive(Debug, Default)]
pub struct TlsStore {
    served: ArcSwap<Served>,
    /// The session ticket keys every worker's TLS listener seals tickets with (`server_config`), so a
    /// ticket issued by one worker resumes on any other.
    ticketer: OnceLock<Arc<dyn rustls::server::ProducesTickets>>,
}

impl TlsStore {
    /// Checks every certificate of `state`, then serves it in place of the current set (all or
    /// nothing: one bad certificate changes nothing).
    pub fn replace(&self, state: TlsState) -> Result<(), TlsError> {
        let mut by_host = HashMap::new();
        for certificate in &state.certificates {
            if certificate.hosts.is_empty() {
                return Err(TlsError::NoHost);
            }
            let key = certified_key(certificate)?;
            for host in &certificate.hosts {
                by_host.insert(host.to_ascii_lowercase(), Arc::clone(&key));
            }
        }
        let mut alpn_challenges = HashMap::new();
        for certificate in &state.tls_alpn01 {
            let key = parse_certified_key(
                &certificate.hosts,
                certificate.chain_pem.as_bytes(),
                certificate.key_pem.as_bytes(),
                false,
            )?;
            for host in &certificate.hosts {
                alpn_challenges.insert(host.to_ascii_lowercase(), Arc::clone(&key));
            }
        }
        let http01 = state
            .http01
            .iter()
            .map(|answer| (answer.token.clone(), answer.key_authorization.clone()))
            .collect();
        self.served.store(Arc::new(Served {
            by_host,
            alpn_challenges,
            http01,
            state,
        }));
        Ok(())
    }

    /// The set served now (keys included: for the control socket's successor hand-over only).
    pub fn state(&self) -> TlsState {
        self.served.load().state.clone()
    }

    /// Hosts with a certificate, sorted.
    pub fn hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self.served.load().by_host.keys().cloned().collect();
        hosts.sort();
        hosts
    }

    /// The key authorization for an HTTP-01 token, if a challenge for it is pending.
    pub fn http01(&self, token: &str) -> Option<String> {
        self.served.load().http01.get(token).cloned()
    }

    fn for_host(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        let served = self.served.load();
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if let Some(key) = served.by_host.get(&host) {
            return Some(Arc::clone(key));
        }
        let (_, parent) = host.split_once('.')?;
        served.by_host.get(&format!("*.{parent}")).cloned()
    }

    fn alpn_challenge(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.served.load().alpn_challenges.get(&host).cloned()
    }
}

/// Resolves a handshake's certificate by SNI from the store's current set.
#[derive(Debug)]
pub struct SniResolver {
    store: Arc<TlsStore>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // Without SNI (a bare IP) there is no host to choose by: the handshake fails, as Caddy's does.
        let host = client_hello.server_name()?.to_owned();
        let acme = client_hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|protocol| protocol == ACME_TLS_ALPN));
        if acme {
            return self.store.alpn_challenge(&host);
        }
        self.store.for_host(&host)
    }
}

/// The TLS listener's rustls configuration: certificates by SNI from `store`, ALPN `h2`, `http/1.1`
/// (and `acme-tls/1` for challenges, which get their certificate and nothing else), rustls's safe
/// defaults (TLS 1.3 and 1.2, its cipher suites and groups), chosen in the server's order.
///
/// Each worker calls this; session resumption uses stateless tickets (`Ticketer`: AEAD-sealed, keys rotated every 6 hours, as nginx's and Caddy's
/// tickets are) from one ticketer per store, so a client resumes on whichever worker the kernel hands its next
/// connection to. rustls's default, a stateful 256-entry cache per configuration, would have been one
/// cache per worker behind a mutex, missed by every resumption landing on another worker and evicted
/// after 256 new clients.
pub fn server_config(store: Arc<TlsStore>) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let ticketer = match store.ticketer.get() {
        Some(ticketer) => Arc::clone(ticketer),
        None => {
            let made = rustls::crypto::ring::Ticketer::new()?;
            // Two workers racing here make two; the first stored is the one all seal with.
            Arc::clone(store.ticketer.get_or_init(|| made))
        }
    };
    // Every suite of rustls's safe defaults stays offered; the server picks, preferring
    // TLS_AES_128_GCM_SHA256 (as Go's crypto/tls and Mozilla's "modern" profile do; 128-bit security,
    // like the X25519/P-256 key exchange it follows). A client's own first choice is usually AES-256 with
    // SHA-384, whose key schedule costs ring's portable SHA-512 code about a fifth of a handshake;
    // ring's SHA-256 uses the CPU's SHA extensions.
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| match suite.suite() {
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
            _ => 1,
        });
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { store }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    config.ticketer = ticketer;
    config.ignore_client_order = true;
    // Tickets carry the session (TLS 1.3 and 1.2 alike): no server-side cache to fill per handshake.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests;
