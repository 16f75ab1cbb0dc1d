//! Certificates for the proxy's HTTPS listener: the routes' `tls` (ACME or given as secrets),
//! stored sealed, pushed to the proxy whole, renewed before they expire.
//!
//! - A deploy settles its release's certificates before anything moves (`ensure_for_release`, in
//!   the Preparing step): given PEMs are checked (parse, key matches, hosts covered, not expired) and
//!   an error names the secret; a host of a `tls = "auto"` route with no certificate gets one from
//!   the ACME server now, and a refusal fails the deploy with the server's own reason.
//! - Every private key and the ACME account's credentials are sealed with the master key in the
//!   store (`secrets::seal_blob`), opened only to build the set sent on the proxy's 0600 control
//!   socket (`push`). Nothing here logs, records or answers a key.
//! - `renew_loop` renews ACME certificates from `renew_at` on (30 days before expiry, or at 2/3 of
//!   the lifetime of a short-lived one), with backoff after a failure, and alerts (`cert.expiring`)
//!   under 14 days.
//!
//! It does not serve TLS (the proxy does) nor decide routes (the engine does).

pub mod acme;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use proxy::tls::{Http01Answer, TlsCertificate, TlsState};
use zeroize::Zeroizing;

use crate::engine::{AppEnv, Engine, now_ms};
use crate::store::{CertRecord, CertSource, NewEvent};

/// Let's Encrypt's directories, by the names `--acme-directory` accepts.
pub const LETS_ENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// Renewal starts this long before expiry (for certificates that live longer than 3 times it).
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Under this, an alert says the certificate expires soon.
pub const ALERT_UNDER: Duration = Duration::from_secs(14 * 24 * 3600);
/// The first wait after a failed renewal; doubled on each further failure, up to `BACKOFF_MAX`.
pub const BACKOFF_MIN: Duration = Duration::from_secs(60);
pub const BACKOFF_MAX: Duration = Duration::from_secs(6 * 3600);

/// The agent's certificate settings (`rollway agent --https --acme-*`).
#[derive(Debug, Clone)]
pub struct CertsConfig {
    /// The directory URL (`--acme-directory`, names resolved by `directory_url`).
    pub acme_directory: String,
    pub acme_email: Option<String>,
    /// Extra trust roots for the ACME server's own HTTPS.
    pub acme_ca: Option<PathBuf>,
    /// Whether the proxy has an HTTPS listener (TLS-ALPN-01 possible; `tls` routes need one).
    pub https: bool,
    /// Overrides the renewal window (`ROLLWAY_CERT_RENEW_BEFORE`, a humantime duration): a window
    /// longer than a certificate's life renews it at once, which is how tests force a renewal.
    pub renew_before: Option<Duration>,
    /// How often `renew_loop` looks (`ROLLWAY_CERT_CHECK_INTERVAL`; default an hour).
    pub check_interval: Duration,
    /// The challenge type to use (`ROLLWAY_ACME_CHALLENGE`: `http-01` or `tls-alpn-01`); by default
    /// TLS-ALPN-01 when there is an HTTPS listener, else HTTP-01.
    pub challenge: Option<acme::Challenge>,
}

impl CertsConfig {
    /// Settings from the flags, and the tunables from the environment.
    pub fn new(
        directory: &str,
        email: Option<String>,
        ca: Option<PathBuf>,
        https: bool,
    ) -> CertsConfig {
        let duration = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|text| humantime::parse_duration(&text).ok())
        };
        CertsConfig {
            acme_directory: directory_url(directory),
            acme_email: email,
            acme_ca: ca,
            https,
            renew_before: duration("ROLLWAY_CERT_RENEW_BEFORE"),
            check_interval: duration("ROLLWAY_CERT_CHECK_INTERVAL")
                .unwrap_or(Duration::from_secs(3600)),
            challenge: std::env::var("ROLLWAY_ACME_CHALLENGE")
                .ok()
                .and_then(|text| acme::Challenge::parse(&text)),
        }
    }
}

/// `production` and `staging` name Let's Encrypt's directories; anything else is a URL.
pub fn directory_url(name: &str) -> String {
    match name {
        "production" | "" => LETS_ENCRYPT_PRODUCTION.to_owned(),
        "staging" => LETS_ENCRYPT_STAGING.to_owned(),
        url => url.to_owned(),
    }
}

/// The agent's certificate state beyond the store: pending ACME challenges, the account, and the
/// one-issuance-at-a-time lock.
pub struct Certs {
    pub config: CertsConfig,
    /// Challenge answers the proxy must serve while an order is validated. std Mutex: edits only.
    challenges: Mutex<Challenges>,
    /// One ACME order at a time (the account's nonce and the challenge set stay simple). tokio Mutex:
    /// held across the order.
    pub(crate) issuing: tokio::sync::Mutex<()>,
    pub(crate) account: tokio::sync::Mutex<Option<instant_acme::Account>>,
    /// A deploy settling its certificates holds this shared; retiring unwanted ones holds it alone,
    /// so a certificate a deploy just settled (or found usable) is never retired under it.
    settling: tokio::sync::RwLock<()>,
    /// The Retry-After of the ACME server's last refusal (429, 503), noted by the ACME client's
    /// HTTP; taken by the failure it explains. std Mutex: edits only.
    pub(crate) retry_after: std::sync::Arc<Mutex<Option<std::time::SystemTime>>>,
    /// When `cert.expiring` was last recorded per host, so the alert comes once a day, not at every
    /// check. std Mutex: edits only.
    expiring_alerted: Mutex<BTreeMap<String, i64>>,
}

#[derive(Default)]
struct Challenges {
    http01: BTreeMap<String, String>,
    tls_alpn01: BTreeMap<String, TlsCertificate>,
}

impl Certs {
    pub fn new(config: CertsConfig) -> Certs {
        Certs {
            config,
            challenges: Mutex::new(Challenges::default()),
            issuing: tokio::sync::Mutex::new(()),
            account: tokio::sync::Mutex::new(None),
            settling: tokio::sync::RwLock::new(()),
            retry_after: std::sync::Arc::new(Mutex::new(None)),
            expiring_alerted: Mutex::new(BTreeMap::new()),
        }
    }

    fn challenges(&self) -> std::sync::MutexGuard<'_, Challenges> {
        self.challenges
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn add_http01(&self, token: String, key_authorization: String) {
        self.challenges().http01.insert(token, key_authorization);
    }

    pub(crate) fn add_tls_alpn01(&self, host: String, certificate: TlsCertificate) {
        self.challenges().tls_alpn01.insert(host, certificate);
    }

    /// Whether `host`'s expiry alert is due (none in the last 24 hours); notes it when it is.
    fn first_alert_today(&self, host: &str, now: i64) -> bool {
        const DAY_MS: i64 = 24 * 3600 * 1000;
        let mut alerted = self
            .expiring_alerted
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match alerted.get(host) {
            Some(last) if now.saturating_sub(*last) < DAY_MS => false,
            _ => {
                alerted.insert(host.to_owned(), now);
                true
            }
        }
    }

    /// The noted Retry-After, forgotten once taken.
    pub(crate) fn take_retry_after(&self) -> Option<std::time::SystemTime> {
        self.retry_after
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }

    pub(crate) fn clear_challenges(&self) {
        let mut challenges = self.challenges();
        challenges.http01.clear();
        challenges.tls_alpn01.clear();
    }
}

/// Why a certificate could not be settled. Never carries a key.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error(
        "route `{route}`: secret `{secret}` is not set in this environment; set it with `rollway secrets set {secret}` (a PEM)"
    )]
    MissingSecret { route: String, secret: String },
    #[error("route `{route}`: secrets `{cert}` and `{key}` are not a usable certificate: {reason}")]
    BadGiven {
        route: String,
        cert: String,
        key: String,
        reason: String,
    },
    #[error(
        "route `{route}`: the certificate in secret `{cert}` does not cover host `{host}` (it names {names})"
    )]
    NotCovered {
        route: String,
        cert: String,
        host: String,
        names: String,
    },
    #[error("route `{route}`: the certificate in secret `{cert}` expired at {expired}")]
    Expired {
        route: String,
        cert: String,
        expired: String,
    },
    #[error(
        "route `{route}` has `tls` but the agent has no HTTPS listener; start it with `rollway agent --https ADDR`"
    )]
    NoHttps { route: String },
    #[error("cannot get a certificate for `{host}` from `{directory}`: {reason}")]
    Acme {
        host: String,
        directory: String,
        reason: String,
        /// The server's Retry-After, when it gave one.
        retry_after: Option<Duration>,
    },
    #[error("cannot tell which hosts `{app}` in `{environment}` still serves over HTTPS: {reason}")]
    Release {
        app: String,
        environment: String,
        reason: String,
    },
    #[error("the certificate for `{host}` cannot be read: {reason}")]
    Parse { host: String, reason: String },
    #[error(transparent)]
    Seal(#[from] crate::secrets::SecretError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("the proxy did not take the certificates: {0}")]
    Proxy(#[from] crate::proxy_link::LinkError),
}

/// What `x509-parser` tells of a chain's first certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    pub issuer: String,
    pub not_before: i64,
    pub not_after: i64,
    /// DNS names (subjectAltName, else the subject's CN), lower case.
    pub names: Vec<String>,
}

/// A certificate chain whose leaf cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadCertError {
    #[error("not a PEM certificate")]
    Pem(#[source] x509_parser::nom::Err<x509_parser::error::PEMError>),
    #[error("not an X.509 certificate")]
    X509(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
}

/// A certificate's subject alternative names: DNS names (lowercase) and IP addresses.
#[derive(Debug, Default)]
pub struct AlternativeNames {
    pub dns: Vec<String>,
    pub ips: Vec<std::net::IpAddr>,
}

/// The subject alternative names of `cert`.
pub fn alternative_names(cert: &x509_parser::certificate::X509Certificate<'_>) -> AlternativeNames {
    use x509_parser::extensions::GeneralName;
    let mut names = AlternativeNames::default();
    let Some(san) = cert.subject_alternative_name().ok().flatten() else {
        return names;
    };
    for name in &san.value.general_names {
        match name {
            GeneralName::DNSName(dns) => names.dns.push(dns.to_ascii_lowercase()),
            GeneralName::IPAddress(bytes) => {
                if let Ok(ip) = <[u8; 4]>::try_from(*bytes) {
                    names.ips.push(ip.into());
                } else if let Ok(ip) = <[u8; 16]>::try_from(*bytes) {
                    names.ips.push(ip.into());
                }
            }
            _ => {}
        }
    }
    names
}

/// Reads the leaf certificate of a PEM chain.
pub fn facts(chain_pem: &str) -> Result<CertFacts, ReadCertError> {
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(chain_pem.as_bytes()).map_err(ReadCertError::Pem)?;
    let cert = pem.parse_x509().map_err(ReadCertError::X509)?;
    let mut names = alternative_names(&cert).dns;
    if names.is_empty()
        && let Some(cn) = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
    {
        names.push(cn.to_ascii_lowercase());
    }
    let issuer = cert
        .issuer()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map_or_else(|| cert.issuer().to_string(), str::to_owned);
    Ok(CertFacts {
        issuer,
        not_before: cert.validity().not_before.timestamp().saturating_mul(1000),
        not_after: cert.validity().not_after.timestamp().saturating_mul(1000),
        names,
    })
}

/// Whether a certificate naming `names` serves `host` (exactly, or one label under a wildcard).
pub fn covers(names: &[String], host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    names.iter().any(|name| {
        name == &host
            || name.strip_prefix("*.").is_some_and(|parent| {
                host.split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == parent)
            })
    })
}

/// When renewal of a certificate valid from `not_before` to `not_after` starts: 30 days before
/// expiry, or at 2/3 of the lifetime when 30 days before would come earlier (short-lived
/// certificates: a 6-day one renews on day 4). `window` (`ROLLWAY_CERT_RENEW_BEFORE`) replaces the
/// rule: renewal starts that long before expiry, whatever the lifetime.
pub fn renew_at(not_before: i64, not_after: i64, window: Option<Duration>) -> i64 {
    let millis = |duration: Duration| i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
    if let Some(window) = window {
        return not_after.saturating_sub(millis(window));
    }
    let lifetime = not_after.saturating_sub(not_before).max(0);
    let two_thirds = not_before.saturating_add(lifetime / 3 * 2);
    not_after
        .saturating_sub(millis(RENEW_BEFORE))
        .max(two_thirds)
}

/// The purpose a host's key is sealed for (the AEAD's associated data).
fn key_purpose(host: &str) -> String {
    format!("cert-key:{host}")
}

/// Seals `key_pem` and stores the certificate for `host`.
pub(crate) fn store_cert(
    engine: &Engine,
    key: &AppEnv,
    host: &str,
    source: CertSource,
    chain_pem: &str,
    key_pem: &str,
) -> Result<CertRecord, CertError> {
    let facts = facts(chain_pem).map_err(|error| CertError::Parse {
        host: host.to_owned(),
        reason: crate::report::chain(&error),
    })?;
    let sealed =
        crate::secrets::seal_blob(&engine.master_key, &key_purpose(host), key_pem.as_bytes())?;
    let record = CertRecord {
        host: host.to_owned(),
        source,
        app: key.app.clone(),
        environment: key.environment.clone(),
        chain_pem: chain_pem.to_owned(),
        key: sealed,
        issuer: facts.issuer,
        not_before: facts.not_before,
        not_after: facts.not_after,
        renewed_at: now_ms(),
        last_error: None,
        failures: 0,
        next_attempt_at: None,
    };
    engine.store.put_cert(&record)?;
    Ok(record)
}

/// The whole set the proxy should serve: every stored certificate (keys opened) and the pending
/// challenges. A key that cannot be opened (another master key) is left out, with a warning.
pub fn tls_state(engine: &Engine) -> Result<TlsState, CertError> {
    let mut certificates = Vec::new();
    for record in engine.store.certs()? {
        let key_pem = match crate::secrets::open_blob(
            &engine.master_key,
            &key_purpose(&record.host),
            &record.key,
        ) {
            Ok(key) => key,
            Err(error) => {
                tracing::warn!(message = "A certificate's key cannot be opened; its host is not served over HTTPS.", host = %record.host, %error);
                continue;
            }
        };
        let key_pem = Zeroizing::new(String::from_utf8_lossy(&key_pem).into_owned());
        certificates.push(TlsCertificate {
            hosts: vec![record.host.clone()],
            chain_pem: record.chain_pem,
            key_pem: key_pem.to_string(),
        });
    }
    let challenges = engine.certs.challenges();
    Ok(TlsState {
        certificates,
        http01: challenges
            .http01
            .iter()
            .map(|(token, key_authorization)| Http01Answer {
                token: token.clone(),
                key_authorization: key_authorization.clone(),
            })
            .collect(),
        tls_alpn01: challenges.tls_alpn01.values().cloned().collect(),
    })
}

/// Sends the proxy the whole certificate set.
pub async fn push(engine: &Engine) -> Result<(), CertError> {
    let state = tls_state(engine)?;
    engine.proxy.put_tls(&state).await?;
    Ok(())
}

/// Settles the certificates of a release's routes before anything moves; `Err` is the reason the
/// deploy fails with (names the secret, or the host and the ACME server's reason).
pub async fn ensure_for_release(
    engine: &Engine,
    key: &AppEnv,
    resolved: &manifest::ResolvedManifest,
    secrets: &BTreeMap<String, crate::secrets::Secret>,
) -> Result<(), CertError> {
    let _settling = engine.certs.settling.read().await;
    let mut changed = false;
    for route in &resolved.config.routes {
        if !route.tls.is_on() {
            continue;
        }
        if !engine.certs.config.https {
            return Err(CertError::NoHttps {
                route: route.service.clone(),
            });
        }
        match &route.tls {
            manifest::RouteTls::Off => {}
            manifest::RouteTls::Given {
                cert,
                key: key_name,
            } => {
                let (chain_pem, key_pem) = given_pems(route, cert, key_name, secrets)?;
                for host in &route.hosts {
                    let current = engine.store.cert(host)?;
                    if current.as_ref().is_some_and(|current| {
                        current.source == CertSource::Given && current.chain_pem == chain_pem
                    }) {
                        continue;
                    }
                    store_cert(engine, key, host, CertSource::Given, chain_pem, key_pem)?;
                    changed = true;
                }
            }
            manifest::RouteTls::Auto => {
                for host in &route.hosts {
                    let current = engine.store.cert(host)?;
                    let usable = current.as_ref().is_some_and(|current| {
                        current.source == CertSource::Acme && current.not_after > now_ms()
                    });
                    if usable {
                        continue;
                    }
                    acme::issue(engine, key, host).await?;
                    changed = true;
                }
            }
        }
    }
    if changed {
        push(engine).await?;
    }
    Ok(())
}

/// Checks a given certificate and key (secrets) for a route: PEM, key matches, hosts covered, not
/// expired. Errors name the secrets, never their values.
fn given_pems<'a>(
    route: &manifest::Route,
    cert: &str,
    key: &str,
    secrets: &'a BTreeMap<String, crate::secrets::Secret>,
) -> Result<(&'a str, &'a str), CertError> {
    let get = |secret: &str| {
        secrets
            .get(secret)
            .map(crate::secrets::Secret::expose)
            .ok_or_else(|| CertError::MissingSecret {
                route: route.service.clone(),
                secret: secret.to_owned(),
            })
    };
    let (chain_pem, key_pem) = (get(cert)?, get(key)?);
    let bad = |reason: String| CertError::BadGiven {
        route: route.service.clone(),
        cert: cert.to_owned(),
        key: key.to_owned(),
        reason,
    };
    proxy::tls::certified_key_from_pem(&route.hosts, chain_pem.as_bytes(), key_pem.as_bytes())
        .map_err(|error| bad(error.to_string()))?;
    let facts = facts(chain_pem).map_err(|error| bad(crate::report::chain(&error)))?;
    for host in &route.hosts {
        if !covers(&facts.names, host) {
            return Err(CertError::NotCovered {
                route: route.service.clone(),
                cert: cert.to_owned(),
                host: host.clone(),
                names: facts.names.join(", "),
            });
        }
    }
    if facts.not_after <= now_ms() {
        return Err(CertError::Expired {
            route: route.service.clone(),
            cert: cert.to_owned(),
            expired: format_ms(facts.not_after),
        });
    }
    Ok((chain_pem, key_pem))
}

/// A unix-ms time as RFC 3339 (UTC).
pub fn format_ms(ms: i64) -> String {
    let time = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(time).to_string()
}

/// Renews ACME certificates when due, for the agent's life.
pub async fn renew_loop(engine: std::sync::Arc<Engine>) {
    loop {
        tokio::select! {
            () = engine.shutdown.cancelled() => return,
            () = tokio::time::sleep(engine.certs.config.check_interval) => {}
        }
        renew_due(&engine).await;
    }
}

/// The hosts whose certificates are still wanted (lower case): those of the `tls` routes of each environment's current release and of every deployment still
/// in flight (whose Preparing step may have just settled them).
fn wanted_hosts(engine: &Engine) -> Result<std::collections::BTreeSet<String>, CertError> {
    let mut releases: Vec<(AppEnv, client::wire::ReleaseNumber)> = Vec::new();
    for (app, environment, current) in engine.store.apps()? {
        if let Some(number) = current {
            releases.push((AppEnv::new(app, environment), number));
        }
    }
    for deployment in engine.store.unfinished_deployments()? {
        releases.push((
            AppEnv::new(deployment.app.clone(), deployment.environment.clone()),
            deployment.to_release,
        ));
    }
    let mut wanted = std::collections::BTreeSet::new();
    for (key, number) in releases {
        let resolved = match crate::deploy::release::load_manifest(engine, &key, number) {
            Ok((_, resolved)) => resolved,
            Err(error) => {
                return Err(CertError::Release {
                    app: key.app.clone(),
                    environment: key.environment.clone(),
                    reason: crate::report::chain(&error),
                });
            }
        };
        for route in resolved
            .config
            .routes
            .iter()
            .filter(|route| route.tls.is_on())
        {
            for host in &route.hosts {
                wanted.insert(host.to_ascii_lowercase());
            }
        }
    }
    Ok(wanted)
}

/// Forgets the certificates no current or in-flight release wants any more (its route dropped
/// `tls`, the host left the routes, or a deploy that settled it failed), so they are neither
/// renewed nor served; a later deploy that wants the host settles it again. Each one retired is an
/// event. Returns how many.
pub async fn retire_unwanted(engine: &Engine) -> Result<usize, CertError> {
    let _alone = engine.certs.settling.write().await;
    let wanted = wanted_hosts(engine)?;
    let mut retired = 0;
    for record in engine.store.certs()? {
        // By host alone: a host another app took over keeps its certificate.
        if wanted.contains(&record.host.to_ascii_lowercase()) {
            continue;
        }
        if engine.store.delete_cert(&record.host)? {
            retired += 1;
            engine.record(NewEvent {
                app: Some(record.app.clone()),
                environment: Some(record.environment.clone()),
                deployment_id: None,
                kind: "cert.retired".to_owned(),
                message: format!(
                    "the certificate for `{}` is no longer used by a `tls` route of `{}` in `{}`: not renewed or served any more",
                    record.host, record.app, record.environment
                ),
                data_json: "{}".to_owned(),
            });
        }
    }
    drop(_alone);
    if retired > 0 {
        push(engine).await?;
    }
    Ok(retired)
}

/// One pass: certificates no release wants are retired; every ACME certificate past its renewal time (and past its backoff) is renewed; any
/// certificate (given ones too) under `ALERT_UNDER` from expiry alerts, once a day per host.
pub async fn renew_due(engine: &Engine) {
    if let Err(error) = retire_unwanted(engine).await {
        tracing::error!(message = "Cannot retire unused certificates.", error = %crate::report::chain(&error));
    }
    let records = match engine.store.certs() {
        Ok(records) => records,
        Err(error) => {
            tracing::error!(message = "Cannot list certificates for renewal.", %error);
            return;
        }
    };
    let now = now_ms();
    for record in records {
        // Given certificates are renewed by whoever gave them; they still alert before expiry.
        let due = record.source == CertSource::Acme
            && now
                >= renew_at(
                    record.not_before,
                    record.not_after,
                    engine.certs.config.renew_before,
                );
        let allowed = record.next_attempt_at.is_none_or(|at| now >= at);
        if due && allowed {
            let _ = renew(engine, &record).await;
        }
        let left = record.not_after.saturating_sub(now_ms());
        if left < i64::try_from(ALERT_UNDER.as_millis()).unwrap_or(i64::MAX)
            && let Ok(Some(current)) = engine.store.cert(&record.host)
            && current.not_after == record.not_after
            && engine.certs.first_alert_today(&record.host, now_ms())
        {
            engine.record(NewEvent {
                app: Some(record.app.clone()),
                environment: Some(record.environment.clone()),
                deployment_id: None,
                kind: "cert.expiring".to_owned(),
                message: format!(
                    "the certificate for `{}` expires at {}{}",
                    record.host,
                    format_ms(record.not_after),
                    current
                        .last_error
                        .map(|error| format!("; the last renewal failed: {error}"))
                        .unwrap_or_default()
                ),
                data_json: "{}".to_owned(),
            });
        }
    }
}

/// Renews one certificate now; a failure is recorded with its backoff and an event.
pub async fn renew(engine: &Engine, record: &CertRecord) -> Result<CertRecord, CertError> {
    let key = AppEnv::new(record.app.clone(), record.environment.clone());
    match acme::issue(engine, &key, &record.host).await {
        Ok(renewed) => {
            push(engine).await?;
            Ok(renewed)
        }
        Err(error) => {
            let reason = crate::report::chain(&error);
            let backoff = next_backoff(record.failures, error.retry_after());
            let _ = engine.store.note_cert_failure(
                &record.host,
                &reason,
                now_ms().saturating_add(i64::try_from(backoff.as_millis()).unwrap_or(i64::MAX)),
            );
            engine.record(NewEvent {
                app: Some(record.app.clone()),
                environment: Some(record.environment.clone()),
                deployment_id: None,
                kind: "cert.renewal_failed".to_owned(),
                message: format!(
                    "renewing the certificate for `{}` failed (next attempt in {}): {reason}",
                    record.host,
                    humantime::format_duration(backoff)
                ),
                data_json: "{}".to_owned(),
            });
            Err(error)
        }
    }
}

/// `BACKOFF_MIN` doubled for each failure in a row, up to `BACKOFF_MAX`; the server's Retry-After
/// wins when it is longer.
pub fn next_backoff(failures: u32, retry_after: Option<Duration>) -> Duration {
    let doubled = BACKOFF_MIN
        .checked_mul(1u32 << failures.min(16))
        .unwrap_or(BACKOFF_MAX)
        .min(BACKOFF_MAX);
    retry_after.map_or(doubled, |retry_after| retry_after.max(doubled))
}

impl CertError {
    /// The ACME server's Retry-After, when it gave one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            CertError::Acme { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
