//! Requests from a chosen loopback source address (`127.0.0.2`, `127.0.0.3`…), so one test can play
//! several clients, a trusted proxy and an untrusted one; and websockets held open through the proxy.
//!
//! Every request is bounded in time: a stuck answer is a `None`, never a hung test.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// A whole answer: status, headers (lowercase names), body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl FullAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// Opens a TCP connection to `addr` from `source` (any port).
pub async fn connect_from(source: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(addr).await
}

/// `GET path` with `Host: host` and `headers` from `source`; `None` on any failure or past `timeout`.
pub async fn get_from(
    source: IpAddr,
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Option<FullAnswer> {
    use http_body_util::{BodyExt as _, Empty};
    let exchange = async {
        let stream = connect_from(source, addr).await.ok()?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .ok()?;
        let driver = tokio::spawn(connection);
        let mut request = hyper::Request::builder()
            .uri(path)
            .header(hyper::header::HOST, host);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Empty::<bytes::Bytes>::new()).ok()?;
        let response = sender.send_request(request).await.ok()?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = response.into_body().collect().await.ok()?.to_bytes();
        driver.abort();
        Some(FullAnswer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::time::timeout(timeout, exchange).await.ok().flatten()
}

/// How a held websocket ended.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum WebsocketEnd {
    /// Still open and echoing when the test asked it to close; closed cleanly by us.
    KeptOpen,
    /// The server side sent a close frame.
    ClosedWithFrame,
    /// The connection ended without a close frame (reset, EOF) or an echo went missing.
    Broken(String),
}

/// Opens a websocket to the demo app's `/ws` through `addr` and echoes one message every `interval`
/// until `stop` fires; reports how it ended. `None` when it could not be opened.
pub async fn hold_websocket(
    addr: SocketAddr,
    host: &str,
    interval: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<WebsocketEnd>> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let url = format!("ws://{host}/ws");
    let (mut websocket, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(url, stream),
    )
    .await
    .ok()?
    .ok()?;
    let mut stop = stop;
    Some(tokio::spawn(async move {
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = stop.changed() => {
                    let _ = websocket.close(None).await;
                    return WebsocketEnd::KeptOpen;
                }
                () = tokio::time::sleep(interval) => {}
            }
            n += 1;
            let text = format!("ping {n}");
            if let Err(error) = websocket.send(Message::text(text.clone())).await {
                return WebsocketEnd::Broken(format!("send: {error}"));
            }
            loop {
                match tokio::time::timeout(Duration::from_secs(10), websocket.next()).await {
                    Ok(Some(Ok(Message::Text(echo)))) if echo.as_str() == text => break,
                    Ok(Some(Ok(Message::Close(_)))) => return WebsocketEnd::ClosedWithFrame,
                    Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                    Ok(Some(Ok(other))) => {
                        return WebsocketEnd::Broken(format!("unexpected {other:?}"));
                    }
                    Ok(Some(Err(error))) => return WebsocketEnd::Broken(format!("{error}")),
                    Ok(None) => return WebsocketEnd::Broken("ended without a close frame".into()),
                    Err(_) => return WebsocketEnd::Broken("no echo within 10s".into()),
                }
            }
        }
    }))
}
