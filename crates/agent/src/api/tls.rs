//! TLS for the control API: whether it is needed (always beyond loopback), and the certificate it
//! presents, self-signed on first start (its key sealed with the master key) or given by the
//! operator (`--api-cert`/`--api-key`).
//!
//! It does not verify clients: the bearer token authenticates them; the CLI authenticates the
//! agent by pinning this certificate's fingerprint (`client::pin`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use client::pin::Fingerprint;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::secrets::MasterKey;

/// The folder of the self-signed certificate, inside the state directory.
pub const DIR: &str = "api-tls";
/// The certificate (public) in PEM.
pub const CERT_FILE: &str = "cert.pem";
/// Its private key, sealed with the master key: never in the clear on disk.
pub const SEALED_KEY_FILE: &str = "key.sealed";
const SEAL_PURPOSE: &str = "api-tls-key";

/// Where the API's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// Made on first start and kept in the state directory.
    SelfSigned,
    /// PEM files the operator gave (`--api-cert`, `--api-key`): the chain, leaf first, and its key.
    Given { cert: PathBuf, key: PathBuf },
}

/// The API's TLS: the acceptor and the fingerprint clients pin.
#[derive(Clone)]
pub struct ApiTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub fingerprint: Fingerprint,
    /// The certificate chain in PEM (public): what `rollway registry ca` gives the nodes' engines.
    pub pem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiTlsError {
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
    #[error("`{path}` holds no PEM {what}")]
    Pem {
        path: String,
        what: &'static str,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("cannot make the API's self-signed certificate")]
    Generate(#[source] rcgen::Error),
    #[error(
        "the API certificate's key in `{path}` does not open with this master key; give the master key it was made with, or remove `{dir}` to make a new certificate (clients must then pin its new fingerprint)"
    )]
    Sealed {
        path: String,
        dir: String,
        #[source]
        source: crate::secrets::blob::OpenError,
    },
    #[error("the API certificate and key do not make a TLS configuration")]
    Config(#[source] rustls::Error),
}

/// TLS is needed unless the API listens on a loopback address (127.0.0.0/8, ::1); `asked` turns it
/// on there too. There is no way to turn it off beyond loopback.
pub fn needs_tls(api: SocketAddr, asked: bool) -> bool {
    asked || !api.ip().is_loopback()
}

/// The API's TLS from `source`; a self-signed certificate is made on the first start, for
/// `rollway-agent`, `localhost` and `names` (the hosts, IP addresses or DNS names, that nodes reach
/// the API and its registry at: an engine checks the registry's certificate names its host).
pub fn load(
    state_dir: &Path,
    master_key: &MasterKey,
    source: &CertSource,
    names: &[String],
) -> Result<ApiTls, ApiTlsError> {
    let (chain, key) = match source {
        CertSource::Given { cert, key } => read_given(cert, key)?,
        CertSource::SelfSigned => self_signed(&state_dir.join(DIR), master_key, names)?,
    };
    let pem_path = match source {
        CertSource::Given { cert, .. } => cert.clone(),
        CertSource::SelfSigned => state_dir.join(DIR).join(CERT_FILE),
    };
    let pem = std::fs::read_to_string(&pem_path).map_err(|source| ApiTlsError::Read {
        path: pem_path.display().to_string(),
        source,
    })?;
    let Some(leaf) = chain.first() else {
        return Err(ApiTlsError::Config(rustls::Error::NoCertificatesPresented));
    };
    let fingerprint = Fingerprint::of_der(leaf.as_ref());
    let missing = names_missing(leaf.as_ref(), names);
    if !missing.is_empty() {
        tracing::warn!(
            message = "The API certificate does not name every host nodes reach the agent at: their engines will refuse to pull from the agent's registry there (x509). Remove the state directory's `api-tls` folder to make a new certificate (clients pin its new fingerprint), or give one with `--api-cert`.",
            missing = ?missing
        );
    }
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(ApiTlsError::Config)?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(ApiTlsError::Config)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(ApiTls {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        fingerprint,
        pem,
    })
}

type Chain = Vec<CertificateDer<'static>>;

fn read_given(cert: &Path, key: &Path) -> Result<(Chain, PrivateKeyDer<'static>), ApiTlsError> {
    let pem_error = |path: &Path, what| {
        let path = path.display().to_string();
        move |source| ApiTlsError::Pem { path, what, source }
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(pem_error(cert, "certificate"))?
        .collect::<Result<Chain, _>>()
        .map_err(pem_error(cert, "certificate"))?;
    if chain.is_empty() {
        return Err(ApiTlsError::Pem {
            path: cert.display().to_string(),
            what: "certificate",
            source: rustls::pki_types::pem::Error::NoItemsFound,
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(pem_error(key, "private key"))?;
    Ok((chain, key))
}

/// The certificate in `dir`, made (with its sealed key) when either file is missing.
fn self_signed(
    dir: &Path,
    master_key: &MasterKey,
    names: &[String],
) -> Result<(Chain, PrivateKeyDer<'static>), ApiTlsError> {
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(SEALED_KEY_FILE);
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| ApiTlsError::Read {
            path: path.display().to_string(),
            source,
        })
    };
    if cert_path.exists() && key_path.exists() {
        let chain = CertificateDer::pem_slice_iter(&read(&cert_path)?)
            .collect::<Result<Chain, _>>()
            .map_err(|source| ApiTlsError::Pem {
                path: cert_path.display().to_string(),
                what: "certificate",
                source,
            })?;
        let key = master_key
            .open_blob(SEAL_PURPOSE, &read(&key_path)?)
            .map_err(|source| ApiTlsError::Sealed {
                path: key_path.display().to_string(),
                dir: dir.display().to_string(),
                source,
            })?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec()));
        return Ok((chain, key));
    }
    let mut subject_names = vec!["rollway-agent".to_owned(), "localhost".to_owned()];
    subject_names.extend(names.iter().filter(|name| !name.is_empty()).cloned());
    subject_names.dedup();
    let made = rcgen::generate_simple_self_signed(subject_names).map_err(ApiTlsError::Generate)?;
    let key_der = zeroize::Zeroizing::new(made.key_pair.serialize_der());
    let write_error = |path: &Path| {
        let path = path.display().to_string();
        move |source| ApiTlsError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(write_error(dir))?;
    // The key first: a certificate on disk always has its key beside it.
    crate::write_private(&key_path, &master_key.seal_blob(SEAL_PURPOSE, &key_der))
        .map_err(write_error(&key_path))?;
    crate::write_private(&cert_path, made.cert.pem().as_bytes())
        .map_err(write_error(&cert_path))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der.to_vec()));
    Ok((vec![made.cert.der().clone()], key))
}

/// Which of `hosts` (IP addresses or DNS names) the certificate `der` does not name in its
/// subject alternative names: an engine pulling from the agent's registry at such a host refuses
/// the certificate (x509).
pub fn names_missing(der: &[u8], hosts: &[String]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return hosts.to_vec();
    };
    let named = crate::certs::alternative_names(&cert);
    hosts
        .iter()
        .filter(|host| match host.parse::<std::net::IpAddr>() {
            Ok(ip) => !named.ips.contains(&ip),
            Err(_) => !named.dns.contains(&host.to_ascii_lowercase()),
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_self_signed_certificate_names_the_hosts_nodes_reach() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = MasterKey::generate();
        let hosts = vec!["10.231.7.1".to_owned(), "agent.internal".to_owned()];
        let (chain, _) = self_signed(dir.path(), &key, &hosts).expect("made");
        assert_eq!(
            names_missing(chain[0].as_ref(), &hosts),
            Vec::<String>::new()
        );
        assert_eq!(
            names_missing(chain[0].as_ref(), &["10.0.0.9".to_owned()]),
            ["10.0.0.9"]
        );
        // The one made stays, whatever is asked later.
        let (again, _) = self_signed(dir.path(), &key, &[]).expect("read");
        assert_eq!(again[0].as_ref(), chain[0].as_ref());
    }

    #[test]
    fn tls_is_needed_beyond_loopback_whatever_is_asked() {
        let at = |text: &str| text.parse::<SocketAddr>().expect("an address");
        assert!(!needs_tls(at("127.0.0.1:7440"), false));
        assert!(!needs_tls(at("127.0.0.2:7440"), false));
        assert!(!needs_tls(at("[::1]:7440"), false));
        assert!(needs_tls(at("127.0.0.1:7440"), true));
        for beyond in [
            "0.0.0.0:7443",
            "10.0.0.5:7443",
            "[::]:7443",
            "[::ffff:127.0.0.1]:7443",
        ] {
            assert!(needs_tls(at(beyond), false), "{beyond}");
        }
    }

    #[test]
    fn the_self_signed_certificate_is_kept_and_its_key_sealed() {
        let state = tempfile::tempdir().expect("temp dir");
        let key = MasterKey::generate();
        let first = load(state.path(), &key, &CertSource::SelfSigned, &[]).expect("made");
        let again = load(state.path(), &key, &CertSource::SelfSigned, &[]).expect("loaded");
        assert_eq!(
            first.fingerprint, again.fingerprint,
            "the identity survives a restart"
        );
        let sealed = std::fs::read(state.path().join(DIR).join(SEALED_KEY_FILE)).expect("key file");
        assert!(!String::from_utf8_lossy(&sealed).contains("PRIVATE KEY"));
        let error = load(
            state.path(),
            &MasterKey::generate(),
            &CertSource::SelfSigned,
            &[],
        )
        .err()
        .expect("another master key cannot open it");
        assert!(error.to_string().contains("remove"), "{error}");
    }

    #[test]
    fn a_given_file_without_pem_is_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cert = dir.path().join("cert.pem");
        std::fs::write(&cert, "not pem").expect("written");
        let error = load(
            dir.path(),
            &MasterKey::generate(),
            &CertSource::Given {
                cert: cert.clone(),
                key: cert.clone(),
            },
            &[],
        )
        .err()
        .expect("refused");
        assert!(error.to_string().contains("cert.pem"), "{error}");
    }
}
