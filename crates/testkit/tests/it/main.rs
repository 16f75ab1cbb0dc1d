//! Integration tests of the test kit: the demo app and the load loop, run against each other.

// Tests may unwrap: a panic with the value is the failure report we want.
#![allow(clippy::unwrap_used)]

mod demo;
mod load;

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;

/// One answer, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub version: Option<String>,
    pub body: String,
}

/// Sends one HTTP/1.1 request on a fresh connection and reads the whole answer.
pub async fn send(addr: SocketAddr, method: Method, path: &str, body: &str) -> Answer {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "demo.test")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let version = response
        .headers()
        .get("x-version")
        .map(|value| value.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        version,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

pub async fn get(addr: SocketAddr, path: &str) -> Answer {
    send(addr, Method::GET, path, "").await
}

/// Same as [`get`] over HTTP/2 with prior knowledge (h2c).
pub async fn get_h2(addr: SocketAddr, path: &str) -> Answer {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let request = Request::builder()
        .uri(format!("http://demo.test{path}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let version = response
        .headers()
        .get("x-version")
        .map(|value| value.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        version,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}
