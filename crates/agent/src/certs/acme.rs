//! One ACME order for one host (instant-acme): the account (made once per directory, its
//! credentials sealed in the store), the challenge answered through the proxy (HTTP-01 on the plain
//! listener or TLS-ALPN-01 on the HTTPS one), a fresh key and CSR, the chain.
//!
//! Errors carry the ACME server's own reason (its problem document's detail and type).

use std::sync::Arc;
use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AuthorizationStatus, BodyWrapper, ChallengeType, Identifier, NewAccount, NewOrder,
    OrderStatus, RetryPolicy,
};
use proxy::tls::TlsCertificate;
use zeroize::Zeroizing;

use super::{CertError, store_cert};
use crate::engine::{AppEnv, Engine, now_ms};
use crate::store::{CertRecord, CertSource, NewEvent};

/// How long a challenge waits for the following proxies (`rollway proxy --follow`) to serve its
/// answer before the ACME server is told to validate; they report every second.
const FOLLOWERS_PATIENCE: Duration = Duration::from_secs(5);

/// Which challenge the agent answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    Http01,
    TlsAlpn01,
}

impl Challenge {
    pub fn parse(text: &str) -> Option<Challenge> {
        match text {
            "http-01" => Some(Challenge::Http01),
            "tls-alpn-01" => Some(Challenge::TlsAlpn01),
            _ => None,
        }
    }

    fn acme_type(self) -> ChallengeType {
        match self {
            Challenge::Http01 => ChallengeType::Http01,
            Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        }
    }
}

/// How long an order may take to become ready, and the certificate to come.
fn retry_policy() -> RetryPolicy {
    RetryPolicy::default()
        .initial_delay(Duration::from_millis(200))
        .timeout(Duration::from_secs(90))
}

/// Obtains a certificate for `host`, stores it (key sealed) for `key`'s app environment, and records
/// `cert.issued`. The caller pushes the new set to the proxy.
pub async fn issue(engine: &Engine, key: &AppEnv, host: &str) -> Result<CertRecord, CertError> {
    let directory = engine.certs.config.acme_directory.clone();
    let fail = |reason: String, retry_after: Option<Duration>| CertError::Acme {
        host: host.to_owned(),
        directory: directory.clone(),
        reason,
        retry_after,
    };
    let _one_at_a_time = engine.certs.issuing.lock().await;
    // A refusal's Retry-After from an earlier order does not apply to this one.
    engine.certs.take_retry_after();
    let account = account(engine)
        .await
        .map_err(|error| fail(describe(&error), retry_after(engine, &error)))?;
    let outcome = order(engine, &account, host).await;
    // Challenges answered or not, they are over.
    engine.certs.clear_challenges();
    if let Err(error) = super::push(engine).await {
        tracing::warn!(message = "Cannot withdraw the ACME challenge answers from the proxy.", error = %crate::report::chain(&error));
    }
    let (chain_pem, key_pem) = outcome.map_err(|(reason, retry)| fail(reason, retry))?;
    let record = store_cert(engine, key, host, CertSource::Acme, &chain_pem, &key_pem)?;
    engine.record(NewEvent {
        app: Some(key.app.clone()),
        environment: Some(key.environment.clone()),
        deployment_id: None,
        kind: "cert.issued".to_owned(),
        message: format!(
            "certificate for `{host}` from {} valid until {}",
            record.issuer,
            super::format_ms(record.not_after)
        ),
        data_json: "{}".to_owned(),
    });
    Ok(record)
}

type OrderFailure = (String, Option<Duration>);

/// The order itself: challenge, finalize, chain. `Err` is the reason and the server's Retry-After.
async fn order(
    engine: &Engine,
    account: &Account,
    host: &str,
) -> Result<(String, Zeroizing<String>), OrderFailure> {
    let failed = |error: instant_acme::Error| (describe(&error), retry_after(engine, &error));
    let identifiers = [Identifier::Dns(host.to_owned())];
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(failed)?;
    let wanted = engine
        .certs
        .config
        .challenge
        .unwrap_or(if engine.certs.config.https {
            Challenge::TlsAlpn01
        } else {
            Challenge::Http01
        });
    {
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization.map_err(failed)?;
            match authorization.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err((format!("the authorization for `{host}` is {other:?}"), None));
                }
            }
            let mut challenge = authorization
                .challenge(wanted.acme_type())
                .ok_or_else(|| (format!("the server offers no {wanted:?} challenge"), None))?;
            let key_authorization = challenge.key_authorization();
            match wanted {
                Challenge::Http01 => engine.certs.add_http01(
                    challenge.token.clone(),
                    key_authorization.as_str().to_owned(),
                ),
                Challenge::TlsAlpn01 => {
                    let certificate = alpn_certificate(host, key_authorization.digest().as_ref())
                        .map_err(|error| (crate::report::chain(&error), None))?;
                    engine.certs.add_tls_alpn01(host.to_owned(), certificate);
                }
            }
            super::push(engine)
                .await
                .map_err(|error| (crate::report::chain(&error), None))?;
            // The validation may reach any proxy that serves the host: the following ones too.
            engine.proxy.followers_have_tls(FOLLOWERS_PATIENCE).await;
            challenge.set_ready().await.map_err(failed)?;
        }
    }
    let status = order.poll_ready(&retry_policy()).await.map_err(failed)?;
    if status != OrderStatus::Ready {
        return Err((invalid_reason(&mut order).await, None));
    }
    let (csr, key_pem) = csr(host).map_err(|error| (crate::report::chain(&error), None))?;
    order.finalize_csr(&csr).await.map_err(failed)?;
    let chain = order
        .poll_certificate(&retry_policy())
        .await
        .map_err(failed)?;
    Ok((chain, key_pem))
}

/// Why an order went invalid: the first challenge error the server reports.
async fn invalid_reason(order: &mut instant_acme::Order) -> String {
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authorization)) = authorizations.next().await {
        if let Ok(state) = authorization.refresh().await
            && let Some(problem) = state
                .challenges
                .iter()
                .find_map(|challenge| challenge.error.as_ref())
        {
            return problem_text(problem);
        }
    }
    "the order became invalid and the server gave no reason".to_owned()
}

/// The ACME server's problem in its own words: detail, then type.
fn problem_text(problem: &instant_acme::Problem) -> String {
    match (&problem.detail, &problem.r#type) {
        (Some(detail), Some(kind)) => format!("{detail} ({kind})"),
        (Some(detail), None) => detail.clone(),
        (None, Some(kind)) => kind.clone(),
        (None, None) => "the server gave no reason".to_owned(),
    }
}

fn describe(error: &instant_acme::Error) -> String {
    match error {
        instant_acme::Error::Api(problem) => problem_text(problem),
        other => crate::report::chain(other),
    }
}

/// When the server asks to be retried: a poll's own hint, or the Retry-After of the last refusal
/// (a rate limit's 429 or a 503) that `RetryAfterClient` saw.
fn retry_after(engine: &Engine, error: &instant_acme::Error) -> Option<Duration> {
    match error {
        instant_acme::Error::Timeout(Some(at)) => {
            Some(at.saturating_duration_since(std::time::Instant::now()))
        }
        _ => engine
            .certs
            .take_retry_after()
            .and_then(|at| at.duration_since(std::time::SystemTime::now()).ok()),
    }
}

/// A `Retry-After` value: delay-seconds or an HTTP-date (RFC 9110 §10.2.3), as the time it names.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<std::time::SystemTime> {
    let value = value.trim();
    match value.parse::<u64>() {
        Ok(seconds) => now.checked_add(Duration::from_secs(seconds)),
        Err(_) => httpdate::parse_http_date(value).ok(),
    }
}

/// The ACME client's HTTP: the hyper client, noting the Retry-After of every refusal (429, 503) in
/// `Certs`, since instant-acme's problem errors do not carry it.
struct RetryAfterClient {
    inner: Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        BodyWrapper<bytes::Bytes>,
    >,
    seen: Arc<std::sync::Mutex<Option<std::time::SystemTime>>>,
}

impl instant_acme::HttpClient for RetryAfterClient {
    fn request(
        &self,
        request: hyper::Request<BodyWrapper<bytes::Bytes>>,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<instant_acme::BytesResponse, instant_acme::Error>,
                > + Send,
        >,
    > {
        let sent = instant_acme::HttpClient::request(&self.inner, request);
        let seen = Arc::clone(&self.seen);
        Box::pin(async move {
            let response = sent.await?;
            let status = response.parts.status;
            if status == hyper::StatusCode::TOO_MANY_REQUESTS
                || status == hyper::StatusCode::SERVICE_UNAVAILABLE
            {
                let at = response
                    .parts
                    .headers
                    .get(hyper::header::RETRY_AFTER)
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| parse_retry_after(value, std::time::SystemTime::now()));
                *seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = at;
            }
            Ok(response)
        })
    }
}

/// Making a key, a certificate request or a challenge certificate failed (rcgen).
#[derive(Debug, thiserror::Error)]
enum MakeError {
    #[error("cannot make a key")]
    Key(#[source] rcgen::Error),
    #[error("`{host}` cannot go in a certificate")]
    Host {
        host: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("cannot make the certificate request")]
    Request(#[source] rcgen::Error),
    #[error("cannot make the challenge certificate")]
    Challenge(#[source] rcgen::Error),
}

/// A new ECDSA P-256 key and a CSR for `host`.
fn csr(host: &str) -> Result<(Vec<u8>, Zeroizing<String>), MakeError> {
    let key = rcgen::KeyPair::generate().map_err(MakeError::Key)?;
    let params =
        rcgen::CertificateParams::new(vec![host.to_owned()]).map_err(|source| MakeError::Host {
            host: host.to_owned(),
            source,
        })?;
    let request = params.serialize_request(&key).map_err(MakeError::Request)?;
    Ok((request.der().to_vec(), Zeroizing::new(key.serialize_pem())))
}

/// The TLS-ALPN-01 challenge certificate (RFC 8737): self-signed for `host`, with the critical
/// acmeIdentifier extension holding the key authorization's SHA-256.
fn alpn_certificate(host: &str, digest: &[u8]) -> Result<TlsCertificate, MakeError> {
    let key = rcgen::KeyPair::generate().map_err(MakeError::Key)?;
    let mut params =
        rcgen::CertificateParams::new(vec![host.to_owned()]).map_err(|source| MakeError::Host {
            host: host.to_owned(),
            source,
        })?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(MakeError::Challenge)?;
    Ok(TlsCertificate {
        hosts: vec![host.to_owned()],
        chain_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The account on the configured directory: loaded from the store (sealed credentials) or made
/// now and stored.
async fn account(engine: &Engine) -> Result<Account, instant_acme::Error> {
    let mut cached = engine.certs.account.lock().await;
    if let Some(account) = cached.as_ref() {
        return Ok(account.clone());
    }
    let config = &engine.certs.config;
    let purpose = format!("acme-account:{}", config.acme_directory);
    let stored = engine
        .store
        .acme_account(&config.acme_directory)
        .map_err(|error| instant_acme::Error::Other(Box::new(error)))?;
    let builder = || -> Result<_, instant_acme::Error> {
        Ok(Account::builder_with_http(Box::new(RetryAfterClient {
            inner: http_client(config.acme_ca.as_deref())?,
            seen: Arc::clone(&engine.certs.retry_after),
        })))
    };
    let account = match stored {
        Some(sealed) => {
            let plain = crate::secrets::open_blob(&engine.master_key, &purpose, &sealed)
                .map_err(|error| instant_acme::Error::Other(Box::new(error)))?;
            let credentials: instant_acme::AccountCredentials = serde_json::from_slice(&plain)?;
            builder()?.from_credentials(credentials).await?
        }
        None => {
            let contact = config
                .acme_email
                .as_ref()
                .map(|email| format!("mailto:{email}"));
            let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
            let (account, credentials) = builder()?
                .create(
                    &NewAccount {
                        contact: &contacts,
                        terms_of_service_agreed: true,
                        only_return_existing: false,
                    },
                    config.acme_directory.clone(),
                    None,
                )
                .await?;
            let plain = Zeroizing::new(serde_json::to_vec(&credentials)?);
            let sealed = crate::secrets::seal_blob(&engine.master_key, &purpose, &plain)
                .map_err(|error| instant_acme::Error::Other(Box::new(error)))?;
            engine
                .store
                .put_acme_account(&config.acme_directory, &sealed, now_ms())
                .map_err(|error| instant_acme::Error::Other(Box::new(error)))?;
            account
        }
    };
    *cached = Some(account.clone());
    Ok(account)
}

/// An HTTPS client trusting the web's roots plus `extra` (PEM, every certificate in the file).
fn http_client(
    extra: Option<&std::path::Path>,
) -> Result<
    Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        BodyWrapper<bytes::Bytes>,
    >,
    instant_acme::Error,
> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots_anchors());
    if let Some(path) = extra {
        let certificates = CertificateDer::pem_file_iter(path)
            .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
            .map_err(|error| {
                instant_acme::Error::Other(Box::new(std::io::Error::other(format!(
                    "cannot read the ACME trust roots `{}`: {error}",
                    path.display()
                ))))
            })?;
        for certificate in certificates {
            roots
                .add(certificate)
                .map_err(|error| instant_acme::Error::Other(Box::new(error)))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|error| instant_acme::Error::Other(Box::new(error)))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

fn webpki_roots_anchors() -> Vec<rustls::pki_types::TrustAnchor<'static>> {
    webpki_roots::TLS_SERVER_ROOTS.to_vec()
}

#[cfg(test)]
mod tests;
