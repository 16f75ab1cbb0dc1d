//! The connection against scripted clients over an in-memory pipe: whole transcripts, `date` removed.

use std::convert::Infallible;

use http_body_util::{BodyExt, Full};
use hyper::header;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;

const LIMITS: HeadLimits = HeadLimits {
    max_bytes: 1024,
    max_fields: 10,
};

/// An answer body whose length is not known in advance (framed chunked for HTTP/1.1).
struct Unsized(Option<Bytes>);

impl Body for Unsized {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.take().map(|bytes| Ok(Frame::data(bytes))))
    }
}

/// An answer body of known length whose frames come one poll apart (each frame is Pending first, as
/// an instance's answer read from its socket is).
struct Paced {
    frames: std::collections::VecDeque<Bytes>,
    left: u64,
    ready: bool,
}

impl Body for Paced {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if !self.ready && !self.frames.is_empty() {
            self.ready = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.ready = false;
        let frame = self.frames.pop_front();
        if let Some(frame) = &frame {
            self.left -= frame.len() as u64;
        }
        Poll::Ready(frame.map(|bytes| Ok(Frame::data(bytes))))
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

enum Answer {
    Sized(Full<Bytes>),
    Unsized(Unsized),
    Paced(Paced),
}

impl Body for Answer {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut *self {
            Answer::Sized(body) => Pin::new(body).poll_frame(cx),
            Answer::Unsized(body) => Pin::new(body).poll_frame(cx),
            Answer::Paced(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Answer::Sized(body) => body.is_end_stream(),
            Answer::Unsized(body) => body.0.is_none(),
            Answer::Paced(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Answer::Sized(body) => body.size_hint(),
            Answer::Unsized(_) => SizeHint::default(),
            Answer::Paced(body) => body.size_hint(),
        }
    }
}

/// Answers by the path: `/echo` reads the body and answers with it (and its trailers' names),
/// `/stream` answers a body of unknown length, `/ignore` answers without reading the body, `/ws`
/// switches protocols and echoes the upgraded connection; anything else answers its method and path.
async fn service(mut request: Request<H1Body>) -> Response<Answer> {
    let path = request.uri().path().to_owned();
    let answer = match path.as_str() {
        "/echo" => {
            let collected = request.body_mut().collect().await;
            match collected {
                Ok(collected) => {
                    let trailers = collected
                        .trailers()
                        .map(|trailers| {
                            trailers
                                .keys()
                                .map(|name| name.as_str())
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default();
                    let mut bytes = collected.to_bytes().to_vec();
                    if !trailers.is_empty() {
                        bytes.extend_from_slice(format!("+{trailers}").as_bytes());
                    }
                    Answer::Sized(Full::new(Bytes::from(bytes)))
                }
                Err(error) => Answer::Sized(Full::new(Bytes::from(format!("error: {error}")))),
            }
        }
        "/stream" => Answer::Unsized(Unsized(Some(Bytes::from_static(b"streamed")))),
        // 3 x 40 KiB, more than the pipe holds: the answer's writes wait for the client too.
        "/paced" => Answer::Paced(Paced {
            frames: (b'a'..=b'c')
                .map(|byte| Bytes::from(vec![byte; PACED_FRAME]))
                .collect(),
            left: 3 * PACED_FRAME as u64,
            ready: false,
        }),
        "/ws" => {
            let Some(pending) = request
                .extensions_mut()
                .remove::<PendingUpgrade>()
                .and_then(|pending| pending.take())
            else {
                return Response::new(Answer::Sized(Full::new(Bytes::from_static(b"no upgrade"))));
            };
            tokio::spawn(async move {
                if let Ok(mut upgraded) = pending.await {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = upgraded.read(&mut buf).await {
                        if n == 0 || upgraded.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
            let mut response = Response::new(Answer::Sized(Full::new(Bytes::new())));
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            response.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("upgrade"),
            );
            response.headers_mut().insert(
                header::UPGRADE,
                header::HeaderValue::from_static("websocket"),
            );
            return response;
        }
        _ => Answer::Sized(Full::new(Bytes::from(format!(
            "{} {}",
            request.method(),
            path
        )))),
    };
    Response::new(answer)
}

const PACED_FRAME: usize = 40 * 1024;

fn start() -> (DuplexStream, tokio::task::JoinHandle<Ended>) {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let task = tokio::spawn(async move {
        let (closing, idle) = (AtomicBool::new(false), AtomicBool::new(false));
        let hooks = Hooks {
            closing: &closing,
            idle: &idle,
            activity: None,
        };
        ServerConn::new(server, LIMITS, Bytes::new())
            .serve(
                |request| async { Ok::<_, Infallible>(service(request).await) },
                hooks,
            )
            .await
    });
    (client, task)
}

/// Writes `requests` one byte at a time, then reads everything until the proxy closes.
async fn transcript(requests: &[u8]) -> String {
    let (mut client, task) = start();
    for byte in requests {
        // The proxy may close before the client is done (a refused head).
        if client.write_all(&[*byte]).await.is_err() {
            break;
        }
    }
    let mut answers = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        client.read_to_end(&mut answers),
    )
    .await
    .expect("the connection closed");
    if let Ended::Failed(error) = task.await.expect("task") {
        panic!("the connection failed: {error}");
    }
    without_dates(&answers)
}

fn without_dates(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .split_inclusive("\r\n")
        .filter(|line| !line.starts_with("date: "))
        .collect()
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_and_close_ends_the_connection() {
    let answers = transcript(
        b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
          HEAD /three HTTP/1.1\r\nHost: a\r\n\r\n\
          GET /stream HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        answers,
        "HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nGET /one\
         HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello\
         HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n\
         HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n8\r\nstreamed\r\n0\r\n\r\n"
    );
}

#[tokio::test]
async fn a_chunked_body_with_extensions_and_trailers_reaches_the_service() {
    let answers = transcript(
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 1\r\n\r\n",
    )
    .await;
    assert_eq!(
        answers,
        "HTTP/1.1 200 OK\r\ncontent-length: 11\r\nconnection: close\r\n\r\nabcde+x-sum"
    );
}

#[tokio::test]
async fn a_bad_chunk_fails_the_body_and_closes_the_connection() {
    let answers = transcript(
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\
          GET /never HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert!(
        answers.contains("error: invalid chunk size line"),
        "{answers}"
    );
    assert!(!answers.contains("/never"), "{answers}");
}

#[tokio::test]
async fn smuggling_and_oversized_heads_are_refused_and_closed() {
    let answers = transcript(
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
          0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert!(
        answers.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answers}"
    );
    assert!(answers.contains("connection: close\r\n"), "{answers}");
    assert!(!answers.contains("smuggled"), "{answers}");
    let mut big = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
    big.extend_from_slice(&[b'a'; 2000]);
    big.extend_from_slice(b"\r\n\r\n");
    let answers = transcript(&big).await;
    assert!(answers.starts_with("HTTP/1.1 431 "), "{answers}");
}

#[tokio::test]
async fn http_10_closes_unless_kept_alive() {
    let answers = transcript(
        b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\n\r\nGET /c HTTP/1.0\r\n\r\n",
    )
    .await;
    assert_eq!(
        answers,
        "HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: keep-alive\r\n\r\nGET /a\
         HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\nGET /b"
    );
}

#[tokio::test]
async fn continue_is_sent_when_the_body_is_first_read_and_never_when_it_is_not() {
    let (mut client, task) = start();
    client
        .write_all(
            b"PUT /echo HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
        )
        .await
        .expect("write");
    let mut interim = [0u8; CONTINUE.len()];
    client.read_exact(&mut interim).await.expect("100 continue");
    assert_eq!(&interim[..], CONTINUE);
    client
        .write_all(b"bodyGET /ignore HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        .await
        .expect("write");
    let mut answers = Vec::new();
    client.read_to_end(&mut answers).await.expect("read");
    // The second request's body was never read: no 100, and the connection closes after its answer.
    assert_eq!(
        without_dates(&answers),
        "HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nbody\
         HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\nGET /ignore"
    );
    assert!(matches!(task.await.expect("task"), Ended::Closed));
}

#[tokio::test]
async fn an_upgrade_hands_the_socket_and_the_bytes_read_ahead_to_the_request() {
    let (mut client, task) = start();
    client
        .write_all(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nearly")
        .await
        .expect("write");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        client.read_exact(&mut byte).await.expect("read");
        head.push(byte[0]);
    }
    assert_eq!(
        without_dates(&head),
        "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
    );
    let mut echoed = [0u8; 5];
    client
        .read_exact(&mut echoed)
        .await
        .expect("read-ahead echoed");
    assert_eq!(&echoed, b"early");
    client.write_all(b"later").await.expect("write");
    client.read_exact(&mut echoed).await.expect("echoed");
    assert_eq!(&echoed, b"later");
    assert!(matches!(task.await.expect("task"), Ended::Upgraded));
}

/// An answer whose frames come over several polls, to a client that reads slower than it is sent:
/// its length is counted across those polls (a framing kept per poll took a whole answer for a
/// short one and closed the keep-alive connection after it, session 29), and the next request on
/// the connection is answered.
#[tokio::test]
async fn a_long_answer_over_many_polls_keeps_the_connection_alive() {
    let (mut client, task) = start();
    client
        .write_all(b"GET /paced HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let mut answers = Vec::new();
    let mut buf = vec![0u8; 1000];
    let expected_tail = b"\r\n\r\nGET /two";
    while !answers.ends_with(expected_tail) {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), client.read(&mut buf))
            .await
            .expect("the answers came")
            .expect("read");
        assert!(n > 0, "closed after {} bytes", answers.len());
        answers.extend_from_slice(&buf[..n]);
        // Slower than the proxy: its writes wait for room.
        tokio::task::yield_now().await;
    }
    let text = without_dates(&answers);
    let first = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
        3 * PACED_FRAME
    );
    assert!(text.starts_with(&first), "{}", &text[..200.min(text.len())]);
    let body = &text[first.len()..first.len() + 3 * PACED_FRAME];
    assert!(body.bytes().take(PACED_FRAME).all(|byte| byte == b'a'));
    assert!(body.bytes().skip(2 * PACED_FRAME).all(|byte| byte == b'c'));
    assert_eq!(
        &text[first.len() + 3 * PACED_FRAME..],
        "HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nGET /two"
    );
    drop(client);
    assert!(matches!(task.await.expect("task"), Ended::Closed));
}

/// The exchanges' future beside the service's: what the connection itself keeps across the wait for an
/// answer and across its write. Until session 32 it kept the request head's parts, the request and the
/// answer's parts there besides (locals of the async block that were borrowed, so kept in its state while
/// in scope), each written per request into lines that are cold again by the connection's next request at
/// 512 connections (bench/proxy/README.md, "Session 32: the HTTP/1 exchange").
// See: issue 20 (ka512).
#[test]
fn issue_20_the_exchange_keeps_no_request_of_its_own() {
    let (_client, server) = tokio::io::duplex(1024);
    let mut connection = ServerConn::new(server, LIMITS, Bytes::new());
    let (closing, idle) = (AtomicBool::new(false), AtomicBool::new(false));
    let hooks = Hooks {
        closing: &closing,
        idle: &idle,
        activity: None,
    };
    let mut service = |_: Request<H1Body>| {
        std::future::ready(Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))))
    };
    let service_size = std::mem::size_of_val(&service(Request::new(H1Body::empty())));
    let exchanges = connection.exchanges(&mut service, hooks);
    let own = std::mem::size_of_val(&exchanges) - service_size;
    // 1,528 bytes in a stable debug build before session 32, 648 since.
    assert!(own < 800, "the exchanges' own state {own} bytes");
}
