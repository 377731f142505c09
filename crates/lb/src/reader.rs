//! Frame reading tuned for the LB's few, busy connections.
//!
//! Unlike `rpc_transport::FrameReader`, this one reads through
//! `AsyncRead::poll_read`, which lets tokio clear the socket's readiness
//! after a short read: a batch costs one `recv`, not one plus an `EAGAIN`.
//! It also keeps the tail of its buffer between batches instead of
//! allocating a fresh one per wake-up, and hands out every frame already
//! buffered without touching the socket ([`FrameReader::next_buffered`]),
//! so the owner can handle a whole batch before writing once.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use rpc_codec::{FrameCodec, FrameError};
use rpc_transport::ReadHalf;
use tokio::time::Instant;
use tokio_util::codec::Decoder;

/// Free space wanted in the buffer before each read.
const READ_CHUNK: usize = 32 * 1024;

pub struct FrameReader {
    io: ReadHalf,
    buf: BytesMut,
    codec: FrameCodec,
    /// How long a started frame may take to arrive in full.
    frame_timeout: Option<Duration>,
    /// Since when we have been waiting for the rest of a buffered frame.
    partial_since: Option<Instant>,
}

impl FrameReader {
    pub fn new(io: ReadHalf, codec: FrameCodec) -> Self {
        FrameReader {
            io,
            buf: BytesMut::new(),
            codec,
            frame_timeout: None,
            partial_since: None,
        }
    }

    /// Fails a frame still incomplete this long after we started waiting
    /// for its rest. Idle connections with nothing buffered are not
    /// affected.
    pub fn with_frame_timeout(mut self, timeout: Duration) -> Self {
        self.frame_timeout = Some(timeout);
        self
    }

    /// Restarts the frame clock: for owners that stopped reading on
    /// purpose (backpressure), so the pause is not held against the peer.
    pub fn reset_frame_clock(&mut self) {
        self.partial_since = None;
    }

    /// Bytes read but not yet returned as a frame.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// The next frame already in the buffer, without reading the socket.
    pub fn next_buffered(&mut self) -> Option<Result<BytesMut, FrameError>> {
        match self.codec.decode(&mut self.buf) {
            Ok(Some(frame)) => {
                self.partial_since = None;
                Some(Ok(frame))
            }
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// The next frame; `None` at a clean end of stream. Cancel-safe.
    pub async fn next(&mut self) -> Option<Result<BytesMut, FrameError>> {
        loop {
            if let Some(r) = self.next_buffered() {
                return Some(r);
            }
            let filled = match (self.frame_timeout, self.buf.is_empty()) {
                (Some(limit), false) => {
                    let since = *self.partial_since.get_or_insert_with(Instant::now);
                    match tokio::time::timeout_at(since + limit, poll_fn(|cx| self.poll_fill(cx)))
                        .await
                    {
                        Ok(r) => r,
                        Err(_) => return Some(Err(FrameError::Incomplete(limit))),
                    }
                }
                _ => poll_fn(|cx| self.poll_fill(cx)).await,
            };
            match filled {
                Ok(0) if self.buf.is_empty() => return None,
                Ok(0) => {
                    let e = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed inside a frame",
                    );
                    return Some(Err(e.into()));
                }
                Ok(_) => {}
                Err(e) => return Some(Err(e.into())),
            }
        }
    }

    /// One read into the buffer's free space.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }
}
