//! Upgraded connections (websockets): bytes copied both ways, held open through a drain, and closed with a
//! websocket close frame (1001, going away) when the instance is cut.
//!
//! It does not interpret messages; it only tracks frame boundaries of the instance-to-client direction so
//! the close frame never lands inside another frame.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Copies until both sides have closed or `cut` fires. A side's end (FIN, reset) is passed on to the other
/// at once; the other then has `half_close_timeout` to finish. On a cut of a websocket, the client gets a
/// close frame (if the instance was not in the middle of a frame) and both sides get a clean shutdown (FIN).
pub(crate) async fn run<D, U>(
    mut downstream: D,
    mut upstream: U,
    cut: CancellationToken,
    websocket: bool,
    half_close_timeout: Duration,
) where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut frames = FrameTracker::default();
    let was_cut = {
        let (mut down_read, mut down_write) = tokio::io::split(&mut downstream);
        let (mut up_read, mut up_write) = tokio::io::split(&mut upstream);
        let client_to_instance = async {
            let _ = tokio::io::copy(&mut down_read, &mut up_write).await;
            // `copy` does not shut its writer down: without this the instance never learns that the client
            // went away and holds the connection (and the drain waiting on it) open.
            let _ = up_write.shutdown().await;
        };
        let instance_to_client = async {
            let mut buffer = vec![0u8; 16 * 1024];
            loop {
                let n = match up_read.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                frames.feed(&buffer[..n]);
                if down_write.write_all(&buffer[..n]).await.is_err() {
                    break;
                }
            }
            let _ = down_write.shutdown().await;
        };
        let both = async {
            tokio::pin!(client_to_instance);
            tokio::pin!(instance_to_client);
            tokio::select! {
                () = &mut client_to_instance => {
                    let _ = tokio::time::timeout(half_close_timeout, instance_to_client).await;
                }
                () = &mut instance_to_client => {
                    let _ = tokio::time::timeout(half_close_timeout, client_to_instance).await;
                }
            }
        };
        tokio::select! {
            () = both => false,
            () = cut.cancelled() => true,
        }
    };
    if was_cut && websocket && frames.at_boundary() {
        // Close frame from a server: FIN + opcode 8, unmasked, 2-byte payload 1001 (going away).
        let _ = downstream.write_all(&[0x88, 0x02, 0x03, 0xE9]).await;
    }
    let _ = downstream.shutdown().await;
    let _ = upstream.shutdown().await;
}

/// Follows websocket frame headers (RFC 6455 section 5.2) in one direction.
#[derive(Debug, Default)]
struct FrameTracker {
    header: [u8; 14],
    header_len: usize,
    payload_left: u64,
}

impl FrameTracker {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.payload_left > 0 {
                let n = data
                    .len()
                    .min(usize::try_from(self.payload_left).unwrap_or(usize::MAX));
                self.payload_left -= n as u64;
                data = &data[n..];
                continue;
            }
            self.header[self.header_len] = data[0];
            self.header_len += 1;
            data = &data[1..];
            if let Some((header_len, payload_len)) = parse_header(&self.header[..self.header_len])
                && header_len == self.header_len
            {
                self.header_len = 0;
                self.payload_left = payload_len;
            }
        }
    }

    fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.payload_left == 0
    }
}

/// Returns the full header length and payload length once enough bytes are known.
fn parse_header(header: &[u8]) -> Option<(usize, u64)> {
    let second = *header.get(1)?;
    let mask_len = if second & 0x80 != 0 { 4 } else { 0 };
    let (extended_len, payload_len) = match second & 0x7f {
        126 => {
            let bytes = header.get(2..4)?;
            (2, u64::from(u16::from_be_bytes([bytes[0], bytes[1]])))
        }
        127 => {
            let bytes: [u8; 8] = header.get(2..10)?.try_into().ok()?;
            (8, u64::from_be_bytes(bytes))
        }
        short => (0, u64::from(short)),
    };
    Some((2 + extended_len + mask_len, payload_len))
}

#[cfg(test)]
mod tests;
