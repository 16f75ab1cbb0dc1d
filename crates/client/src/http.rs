//! The typed HTTP client of the agent API: one method per route, errors sorted by who is at fault.
//!
//! It speaks HTTP/1.1 to the agent: over TLS (`https://`), trusting only the pinned certificate
//! fingerprint (`pin::PinVerifier`, checked during the handshake, so nothing is sent to a server
//! that does not hold the pinned certificate), or plain `http://` to a loopback address only. The
//! token travels in the `Authorization` header only, never in a URL or a log line.

use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;

mod edge;
mod ingress;
mod workloads;

use crate::pin::{Fingerprint, PinVerifier};
use crate::wire::LockView;
use crate::wire::{
    AgentInfo, BackupView, DeployRequest, DeploymentView, ErrorBody, EventView, LogLineView,
    ReleaseView, RemoteBackupView, RestoreView, RollbackRequest, SecretValue, SecretView,
    StatusView, TokenCreated, TokenRequest, TokenView, VerifyRequest, VerifyView,
};

/// The longest line of a streamed answer (`Client::lines`). The longest the agent sends is a
/// following proxy's TLS set: every certificate chain with its key, a few KiB per host.
pub const MAX_STREAMED_LINE: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the agent at `{url}`")]
    Unreachable {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the agent refused the token: {message}")]
    Unauthorized { message: String },
    #[error("the token's role does not allow this: {message}")]
    Forbidden { message: String },
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error(
        "the agent's answer for `{path}` is not the certificate it presented in the handshake (or it serves plain HTTP)"
    )]
    CertificateUnchecked { path: String },
    #[error("unexpected answer from the agent for `{path}`")]
    Decode {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "invalid agent URL `{0}`; expected `https://HOST:PORT` (or `http://` to a loopback address)"
    )]
    InvalidUrl(String),
    #[error(
        "plain `http://` is accepted for a loopback address only, not `{host}`: the token would cross the network in clear"
    )]
    PlainHttpBeyondLoopback { host: String },
    #[error("no certificate fingerprint is pinned for the agent at `{url}`")]
    NotPinned { url: String },
    #[error(
        "the agent at `{url}` presented the certificate `{presented}`, not the pinned `{expected}`; nothing was sent"
    )]
    CertificateChanged {
        url: String,
        expected: Fingerprint,
        presented: Fingerprint,
    },
    #[error(
        "the agent at `{url}` streamed a line longer than {limit} bytes; is it an agent of this version?"
    )]
    LineTooLong { url: String, limit: usize },
    #[error("cannot set up TLS for `{url}`")]
    Tls {
        url: String,
        #[source]
        source: rustls::Error,
    },
}

impl ClientError {
    /// True when the agent could not be reached or refused the token (exit code 3).
    pub fn is_access(&self) -> bool {
        matches!(
            self,
            ClientError::Unreachable { .. }
                | ClientError::Unauthorized { .. }
                | ClientError::Forbidden { .. }
                | ClientError::CertificateChanged { .. }
                | ClientError::NotPinned { .. }
        )
    }

    /// The API's error code, when the agent answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// A client of one agent. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// The certificate an `https://` agent must present.
    pin: Option<Fingerprint>,
    /// What the agent presented in the last handshake (to tell a changed certificate apart).
    presented: Arc<Mutex<Option<Fingerprint>>>,
}

impl std::fmt::Debug for Client {
    // Leaves out the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client of a loopback `http://` agent, or of an `https://` one without a pin (which
    /// refuses every request with [`ClientError::NotPinned`]).
    pub fn new(base: &str, token: Option<String>) -> Result<Client, ClientError> {
        Client::with_pin(base, token, None)
    }

    /// A client that trusts an `https://` agent only if it presents the certificate `pin`.
    pub fn with_pin(
        base: &str,
        token: Option<String>,
        pin: Option<Fingerprint>,
    ) -> Result<Client, ClientError> {
        let base = base.trim_end_matches('/').to_owned();
        let target = AgentUrl::parse(&base)?;
        if !target.tls && !is_loopback_host(&target.host) {
            return Err(ClientError::PlainHttpBeyondLoopback { host: target.host });
        }
        if target.tls && pin.is_none() {
            return Err(ClientError::NotPinned { url: base });
        }
        Client::build_client(base, token, pin)
    }

    fn build_client(
        base: String,
        token: Option<String>,
        pin: Option<Fingerprint>,
    ) -> Result<Client, ClientError> {
        let verifier = Arc::new(PinVerifier::new(pin));
        let presented = verifier.presented();
        let tls = verifier
            .client_config()
            .map_err(|source| ClientError::Tls {
                url: base.clone(),
                source,
            })?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let http = HyperClient::builder(TokioExecutor::new()).build(connector);
        Ok(Client {
            base,
            token,
            http,
            pin,
            presented,
        })
    }

    /// The fingerprint of the certificate an `https://` agent presents, learnt from a handshake
    /// that is then refused: no request (and no token) is sent.
    pub async fn probe_fingerprint(base: &str) -> Result<Fingerprint, ClientError> {
        let base = base.trim_end_matches('/').to_owned();
        if !AgentUrl::parse(&base)?.tls {
            return Err(ClientError::InvalidUrl(base));
        }
        let client = Client::build_client(base, None, None)?;
        let attempt = client
            .http
            .request(client.build(Method::GET, "/healthz", None, None)?)
            .await;
        let presented = client.presented.lock().ok().and_then(|slot| *slot);
        match (presented, attempt) {
            (Some(fingerprint), _) => Ok(fingerprint),
            (None, Err(source)) => Err(client.unreachable(source)),
            (None, Ok(_)) => Err(ClientError::InvalidUrl(client.base)),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn healthz(&self) -> Result<(), ClientError> {
        self.request_bytes(Method::GET, "/healthz", None, None)
            .await
            .map(|_| ())
    }

    pub async fn agent_info(&self) -> Result<AgentInfo, ClientError> {
        self.get("/v1/agent").await
    }

    /// The API's certificate in PEM, checked: its leaf is the certificate the agent presented in
    /// this connection's handshake, which the pin (or the trust on first use) vouched for.
    pub async fn api_certificate(&self) -> Result<String, ClientError> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject as _;
        let path = "/v1/agent/certificate";
        let view: crate::wire::ApiCertificateView = self.get(path).await?;
        let presented = self.presented.lock().ok().and_then(|slot| *slot);
        let leaf = CertificateDer::pem_slice_iter(view.pem.as_bytes())
            .next()
            .and_then(Result::ok)
            .map(|der| Fingerprint::of_der(der.as_ref()));
        match (presented, leaf) {
            (Some(presented), Some(leaf)) if presented == leaf => Ok(view.pem),
            (Some(presented), Some(leaf)) => Err(ClientError::CertificateChanged {
                url: self.base.clone(),
                expected: presented,
                presented: leaf,
            }),
            _ => Err(ClientError::CertificateUnchecked {
                path: path.to_owned(),
            }),
        }
    }

    pub async fn artifact_exists(&self, digest: &str) -> Result<bool, ClientError> {
        match self
            .request_bytes(Method::HEAD, &format!("/v1/artifacts/{digest}"), None, None)
            .await
        {
            Ok(_) => Ok(true),
            Err(ClientError::Api { status: 404, .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }

    pub async fn upload_artifact(&self, digest: &str, bytes: Vec<u8>) -> Result<(), ClientError> {
        self.request_bytes(
            Method::PUT,
            &format!("/v1/artifacts/{digest}"),
            Some(Bytes::from(bytes)),
            Some("application/zstd"),
        )
        .await
        .map(|_| ())
    }

    pub async fn deploy(
        &self,
        app: &str,
        env: &str,
        request: &DeployRequest,
    ) -> Result<DeploymentView, ClientError> {
        self.post(
            &format!("/v1/apps/{app}/environments/{env}/deployments"),
            request,
        )
        .await
    }

    pub async fn rollback(
        &self,
        app: &str,
        env: &str,
        request: &RollbackRequest,
    ) -> Result<DeploymentView, ClientError> {
        self.post(
            &format!("/v1/apps/{app}/environments/{env}/rollback"),
            request,
        )
        .await
    }

    pub async fn deployment(&self, id: &str) -> Result<DeploymentView, ClientError> {
        self.get(&format!("/v1/deployments/{id}")).await
    }

    /// `promote`, `abort` or `approve` a running deployment.
    pub async fn signal(&self, id: &str, verb: &str) -> Result<DeploymentView, ClientError> {
        self.post(
            &format!("/v1/deployments/{id}/{verb}"),
            &serde_json::json!({}),
        )
        .await
    }

    pub async fn status(&self, app: &str, env: &str) -> Result<StatusView, ClientError> {
        self.get(&format!("/v1/apps/{app}/environments/{env}/status"))
            .await
    }

    pub async fn releases(&self, app: &str, env: &str) -> Result<Vec<ReleaseView>, ClientError> {
        self.get(&format!("/v1/apps/{app}/environments/{env}/releases"))
            .await
    }

    pub async fn logs(
        &self,
        app: &str,
        env: &str,
        n: usize,
    ) -> Result<Vec<LogLineView>, ClientError> {
        self.get(&format!("/v1/apps/{app}/environments/{env}/logs?n={n}"))
            .await
    }

    pub async fn events(&self, after: i64, limit: usize) -> Result<Vec<EventView>, ClientError> {
        self.get(&format!("/v1/events?after={after}&limit={limit}"))
            .await
    }

    pub async fn deployment_events(
        &self,
        id: &str,
        after: i64,
    ) -> Result<Vec<EventView>, ClientError> {
        self.get(&format!("/v1/deployments/{id}/events?after={after}"))
            .await
    }

    pub async fn lock(&self, app: &str, env: &str) -> Result<Option<LockView>, ClientError> {
        self.get(&format!("/v1/apps/{app}/environments/{env}/lock"))
            .await
    }

    pub async fn release_lock(
        &self,
        app: &str,
        env: &str,
    ) -> Result<Option<LockView>, ClientError> {
        let path = format!("/v1/apps/{app}/environments/{env}/lock");
        let bytes = self
            .request_bytes(Method::DELETE, &path, None, None)
            .await?;
        decode(&path, &bytes)
    }

    /// `POST /v1/proxy/upgrade`: the agent hands the listeners to a new proxy of its binary.
    pub async fn upgrade_proxy(&self) -> Result<crate::wire::ProxyUpgradeView, ClientError> {
        self.post("/v1/proxy/upgrade", &serde_json::json!({})).await
    }

    /// Certificates of the agent's HTTPS routes, of one environment or all.
    pub async fn certs(
        &self,
        env: Option<&str>,
    ) -> Result<Vec<crate::wire::CertView>, ClientError> {
        match env {
            Some(env) => self.get(&format!("/v1/certs?env={env}")).await,
            None => self.get("/v1/certs").await,
        }
    }

    /// Renews a host's ACME certificate now.
    pub async fn renew_cert(&self, host: &str) -> Result<crate::wire::CertView, ClientError> {
        self.post(&format!("/v1/certs/{host}/renew"), &serde_json::json!({}))
            .await
    }

    pub async fn backups(&self, app: &str, env: &str) -> Result<Vec<BackupView>, ClientError> {
        self.get(&format!("/v1/apps/{app}/environments/{env}/backups"))
            .await
    }

    pub async fn create_backup(&self, app: &str, env: &str) -> Result<BackupView, ClientError> {
        self.post(
            &format!("/v1/apps/{app}/environments/{env}/backups"),
            &serde_json::json!({}),
        )
        .await
    }

    pub async fn remote_backups(
        &self,
        app: &str,
        env: &str,
    ) -> Result<Vec<RemoteBackupView>, ClientError> {
        self.get(&format!("/v1/apps/{app}/environments/{env}/backups/remote"))
            .await
    }

    pub async fn verify_backup(
        &self,
        app: &str,
        env: &str,
        id: Option<&str>,
    ) -> Result<VerifyView, ClientError> {
        self.post(
            &format!("/v1/apps/{app}/environments/{env}/backups/verify"),
            &VerifyRequest {
                id: id.map(str::to_owned),
            },
        )
        .await
    }

    pub async fn restore_backup(
        &self,
        app: &str,
        env: &str,
        id: &str,
    ) -> Result<RestoreView, ClientError> {
        self.post(
            &format!("/v1/apps/{app}/environments/{env}/backups/{id}/restore"),
            &serde_json::json!({}),
        )
        .await
    }

    pub async fn secrets(&self, app: &str, env: &str) -> Result<Vec<SecretView>, ClientError> {
        self.get(&format!("/v1/apps/{app}/environments/{env}/secrets"))
            .await
    }

    pub async fn set_secret(
        &self,
        app: &str,
        env: &str,
        name: &str,
        value: &SecretValue,
    ) -> Result<SecretView, ClientError> {
        let body = serde_json::to_vec(value).map_err(|source| ClientError::Decode {
            path: "secrets".to_owned(),
            source,
        })?;
        let path = format!("/v1/apps/{app}/environments/{env}/secrets/{name}");
        let bytes = self
            .request_bytes(
                Method::PUT,
                &path,
                Some(Bytes::from(body)),
                Some("application/json"),
            )
            .await?;
        decode(&path, &bytes)
    }

    pub async fn unset_secret(&self, app: &str, env: &str, name: &str) -> Result<(), ClientError> {
        self.request_bytes(
            Method::DELETE,
            &format!("/v1/apps/{app}/environments/{env}/secrets/{name}"),
            None,
            None,
        )
        .await
        .map(|_| ())
    }

    pub async fn create_token(&self, request: &TokenRequest) -> Result<TokenCreated, ClientError> {
        self.post("/v1/tokens", request).await
    }

    pub async fn tokens(&self) -> Result<Vec<TokenView>, ClientError> {
        self.get("/v1/tokens").await
    }

    pub async fn revoke_token(&self, id: &str) -> Result<(), ClientError> {
        self.request_bytes(Method::DELETE, &format!("/v1/tokens/{id}"), None, None)
            .await
            .map(|_| ())
    }

    /// Follows a server-sent events stream, calling `on_event(name, data)` until it returns
    /// `Break` or the stream ends.
    pub async fn follow(
        &self,
        path: &str,
        mut on_event: impl FnMut(&str, &str) -> ControlFlow<()>,
    ) -> Result<(), ClientError> {
        let request = self.build(Method::GET, path, None, None)?;
        let (mut event, mut data) = (String::from("message"), String::new());
        self.lines(request, |line| {
            let line = String::from_utf8_lossy(line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !data.is_empty() && on_event(&event, &data).is_break() {
                    return Ok(ControlFlow::Break(()));
                }
                event = String::from("message");
                data.clear();
            } else if let Some(value) = line.strip_prefix("event:") {
                event = value.trim().to_owned();
            } else if let Some(value) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value.strip_prefix(' ').unwrap_or(value));
            }
            Ok(ControlFlow::Continue(()))
        })
        .await
    }

    /// Sends `request` and hands each line of a streamed answer (with its `\n`) to `on_line` as it
    /// arrives, until `on_line` breaks or the answer ends; an answer that is not a success is the
    /// API's error. The one reader of streamed answers (server-sent events, `run` frames).
    pub(crate) async fn lines(
        &self,
        request: hyper::Request<http_body_util::Full<Bytes>>,
        mut on_line: impl FnMut(&[u8]) -> Result<ControlFlow<()>, ClientError>,
    ) -> Result<(), ClientError> {
        let response = self
            .http
            .request(request)
            .await
            .map_err(|source| self.unreachable(source))?;
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let bytes = body
                .collect()
                .await
                .map_err(|source| self.unreachable(source))?
                .to_bytes();
            return Err(api_error(status, &bytes));
        }
        let mut buffer: Vec<u8> = Vec::new();
        // How much of `buffer` is known to hold no newline: a long line arriving in many chunks
        // is scanned once, not once per chunk.
        let mut scanned = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|source| self.unreachable(source))?;
            let Some(chunk) = frame.data_ref() else {
                continue;
            };
            buffer.extend_from_slice(chunk);
            while let Some(newline) = buffer[scanned..].iter().position(|byte| *byte == b'\n') {
                let line: Vec<u8> = buffer.drain(..=scanned + newline).collect();
                scanned = 0;
                if on_line(&line)?.is_break() {
                    return Ok(());
                }
            }
            scanned = buffer.len();
            if buffer.len() > MAX_STREAMED_LINE {
                return Err(ClientError::LineTooLong {
                    url: self.base.clone(),
                    limit: MAX_STREAMED_LINE,
                });
            }
        }
        Ok(())
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let bytes = self.request_bytes(Method::GET, path, None, None).await?;
        decode(path, &bytes)
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(|source| ClientError::Decode {
            path: path.to_owned(),
            source,
        })?;
        let bytes = self
            .request_bytes(
                Method::POST,
                path,
                Some(Bytes::from(body)),
                Some("application/json"),
            )
            .await?;
        decode(path, &bytes)
    }

    async fn request_bytes(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        content_type: Option<&str>,
    ) -> Result<Bytes, ClientError> {
        let request = self.build(method, path, body, content_type)?;
        let response = self
            .http
            .request(request)
            .await
            .map_err(|source| self.unreachable(source))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|source| self.unreachable(source))?
            .to_bytes();
        if status.is_success() {
            Ok(bytes)
        } else {
            Err(api_error(status, &bytes))
        }
    }

    fn build(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        content_type: Option<&str>,
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut builder = Request::builder().method(method).uri(&url);
        if let Some(token) = &self.token {
            builder = builder.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(content_type) = content_type {
            builder = builder.header(hyper::header::CONTENT_TYPE, content_type);
        }
        builder
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|_| ClientError::InvalidUrl(url))
    }

    fn unreachable(&self, source: impl std::error::Error + Send + Sync + 'static) -> ClientError {
        let presented = self.presented.lock().ok().and_then(|slot| *slot);
        if let (Some(expected), Some(presented)) = (self.pin, presented)
            && expected != presented
        {
            return ClientError::CertificateChanged {
                url: self.base.clone(),
                expected,
                presented,
            };
        }
        ClientError::Unreachable {
            url: self.base.clone(),
            source: Box::new(source),
        }
    }
}

/// The parts of an agent URL the client judges: whether it is TLS, its host and `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentUrl {
    pub tls: bool,
    /// Without brackets for IPv6.
    pub host: String,
    /// `host:port` (the port made explicit), the key of `known_agents`.
    pub authority: String,
}

impl AgentUrl {
    pub fn parse(url: &str) -> Result<AgentUrl, ClientError> {
        let invalid = || ClientError::InvalidUrl(url.to_owned());
        let uri = url.parse::<hyper::Uri>().map_err(|_| invalid())?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(invalid()),
        };
        let host = uri
            .host()
            .filter(|host| !host.is_empty())
            .ok_or_else(invalid)?;
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(AgentUrl {
            tls,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            authority: format!("{host}:{port}").to_ascii_lowercase(),
        })
    }
}

/// `localhost`, 127.0.0.0/8 or `::1`: where plain HTTP never leaves the machine.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn decode<T: DeserializeOwned>(path: &str, bytes: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(bytes).map_err(|source| ClientError::Decode {
        path: path.to_owned(),
        source,
    })
}

fn api_error(status: StatusCode, bytes: &[u8]) -> ClientError {
    let (code, message) = match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => (body.error.code, body.error.message),
        Err(_) => (
            status.as_str().to_owned(),
            format!("the agent answered {status}"),
        ),
    };
    match status {
        StatusCode::UNAUTHORIZED => ClientError::Unauthorized { message },
        StatusCode::FORBIDDEN => ClientError::Forbidden { message },
        _ => ClientError::Api {
            status: status.as_u16(),
            code,
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A loopback server that answers one request with `chunks` as a chunked 200 answer.
    async fn serve_chunks(chunks: Vec<Vec<u8>>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut request = [0_u8; 4096];
            let _ = socket.read(&mut request).await;
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n";
            if socket.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            for chunk in chunks {
                let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
                framed.extend_from_slice(&chunk);
                framed.extend_from_slice(b"\r\n");
                if socket.write_all(&framed).await.is_err() {
                    return;
                }
            }
            let _ = socket.write_all(b"0\r\n\r\n").await;
        });
        format!("http://{addr}")
    }

    async fn read_lines(base: &str) -> (Vec<Vec<u8>>, Result<(), ClientError>) {
        let client = Client::new(base, None).expect("client");
        let request = client
            .build(Method::GET, "/v1/stream", None, None)
            .expect("request");
        let mut seen = Vec::new();
        let outcome = client
            .lines(request, |line| {
                seen.push(line.to_vec());
                Ok(ControlFlow::Continue(()))
            })
            .await;
        (seen, outcome)
    }

    #[tokio::test]
    async fn lines_split_over_many_chunks_arrive_whole_and_in_order() {
        let mut chunks: Vec<Vec<u8>> = b"{\"a\":1}\n{\"b\":"
            .chunks(3)
            .map(<[u8]>::to_vec)
            .collect();
        chunks.push(b"22}\n{\"c\":3}\n".to_vec());
        let base = serve_chunks(chunks).await;
        let (seen, outcome) = read_lines(&base).await;
        assert!(outcome.is_ok(), "{outcome:?}");
        assert_eq!(
            seen,
            [
                b"{\"a\":1}\n".to_vec(),
                b"{\"b\":22}\n".to_vec(),
                b"{\"c\":3}\n".to_vec()
            ]
        );
    }

    #[tokio::test]
    async fn a_streamed_line_over_the_limit_is_refused_and_not_kept_growing() {
        let chunk = vec![b'x'; 1 << 20];
        let chunks = vec![chunk; MAX_STREAMED_LINE / (1 << 20) + 2];
        let base = serve_chunks(chunks).await;
        let (seen, outcome) = read_lines(&base).await;
        assert!(seen.is_empty());
        match outcome {
            Err(ClientError::LineTooLong { limit, .. }) => assert_eq!(limit, MAX_STREAMED_LINE),
            other => panic!("expected LineTooLong, got {other:?}"),
        }
    }
}
