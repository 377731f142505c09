use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use rpc_codec::{FrameCodec, FrameError};
use tokio::time::Instant;
use tokio_util::codec::Decoder;

use crate::stream::ReadHalf;

/// Bytes requested from the kernel per read, at first and at least.
const MIN_CHUNK: usize = 16 * 1024;
/// The most a read grows to while reads keep filling the whole buffer.
const MAX_CHUNK: usize = 256 * 1024;
/// A started frame at most this long, waiting for its rest, is kept in a
/// buffer of its own size rather than a whole read's.
const SMALL_PARTIAL: usize = 1024;

/// Reads frames, many per wake-up, holding no buffer while the connection
/// is idle.
///
/// `FramedRead` keeps an 8 KiB buffer per connection forever; with tens of
/// thousands of mostly idle clients that is most of a proxy's memory. Here
/// the buffer is allocated when the socket becomes readable and released
/// once everything read has been handed out as frames; a connection that
/// sent the start of a frame and then nothing keeps only those bytes (a
/// peer cannot pin a read buffer per connection by sending a few bytes).
/// Reads go through
/// `poll_read`, so a short read (the socket is drained) clears readiness:
/// a batch costs one `recv`, not one plus an `EAGAIN`.
pub struct FrameReader {
    io: ReadHalf,
    buf: BytesMut,
    codec: FrameCodec,
    /// How long a started frame may take to arrive in full.
    frame_timeout: Option<Duration>,
    /// Since when we have been waiting for the rest of a buffered frame.
    partial_since: Option<Instant>,
    /// Bytes to make room for before a read: doubles while reads fill
    /// the room they are given (a peer streaming large frames gets one
    /// `recv` per many frames), halves when they use little of it.
    chunk: usize,
}

impl FrameReader {
    pub fn new(io: ReadHalf, codec: FrameCodec) -> Self {
        FrameReader {
            io,
            buf: BytesMut::new(),
            codec,
            frame_timeout: None,
            partial_since: None,
            chunk: MIN_CHUNK,
        }
    }

    /// Starts with `bytes` already read from the stream (by another
    /// process that handed the connection over mid-frame).
    pub fn with_buffered(mut self, bytes: BytesMut) -> Self {
        self.buf = bytes;
        self
    }

    /// The stream and the bytes read from it but not yet returned as frames.
    pub fn into_parts(self) -> (ReadHalf, BytesMut) {
        (self.io, self.buf)
    }

    /// Fails a frame still incomplete this long after we started waiting
    /// for its rest (a peer trickling bytes or stalled mid-frame). Idle
    /// connections with nothing buffered are not affected.
    pub fn with_frame_timeout(mut self, timeout: Duration) -> Self {
        self.frame_timeout = Some(timeout);
        self
    }

    /// Restarts the frame clock: for owners that stopped reading on
    /// purpose (backpressure), so the pause is not held against the peer.
    pub fn reset_frame_clock(&mut self) {
        self.partial_since = None;
    }

    /// Bytes read but not yet returned as a frame (the start of the frame
    /// being received, if any).
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes the read buffer holds (0 while the connection is idle).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
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
            if self.buf.is_empty() {
                // Drop the (possibly shared) tail so idle costs nothing.
                self.buf = BytesMut::new();
                if let Err(e) = self.io.readable().await {
                    return Some(Err(e.into()));
                }
            }
            let filled = match (self.frame_timeout, self.buf.is_empty()) {
                (Some(limit), false) => {
                    let since = *self.partial_since.get_or_insert_with(Instant::now);
                    let fill = poll_fn(|cx| self.poll_fill(cx));
                    match tokio::time::timeout_at(since + limit, fill).await {
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

    /// One read into the buffer's free space. A read that would block on
    /// an empty buffer gives the buffer back (readiness can be reported
    /// for a socket with nothing to read, e.g. just after accept).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < self.chunk / 4 {
            self.buf.reserve(self.chunk);
        }
        let room = self.buf.capacity() - self.buf.len();
        let r = tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf);
        match &r {
            Poll::Ready(Ok(n)) if *n == room => self.chunk = (self.chunk * 2).min(MAX_CHUNK),
            Poll::Ready(Ok(n)) if *n < self.chunk / 8 => {
                self.chunk = (self.chunk / 2).max(MIN_CHUNK)
            }
            Poll::Pending if self.buf.is_empty() => self.buf = BytesMut::new(),
            Poll::Pending
                if self.buf.len() <= SMALL_PARTIAL && self.buf.capacity() > 2 * SMALL_PARTIAL =>
            {
                self.buf = BytesMut::from(&self.buf[..]);
            }
            _ => {}
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Address, Listener, Stream, WriteHalf};
    use tokio::io::AsyncWriteExt;

    /// A loopback connection: the client end, and a reader on the accepted
    /// end (with its write half, kept open).
    async fn connected() -> (Stream, FrameReader, WriteHalf) {
        let l = Listener::bind(&Address::Tcp("127.0.0.1:0".into()))
            .await
            .unwrap();
        let c = Stream::connect(&l.local_address()).await.unwrap();
        let (r, w) = l.accept().await.unwrap().into_split();
        (c, FrameReader::new(r, FrameCodec::default()), w)
    }

    /// Nothing arrives for a while, and the reader holds no buffer.
    async fn assert_idle_without_buffer(reader: &mut FrameReader) {
        let idle = tokio::time::timeout(Duration::from_millis(50), reader.next()).await;
        assert!(idle.is_err());
        assert_eq!(reader.capacity(), 0);
    }

    #[tokio::test]
    async fn an_idle_connection_holds_no_buffer() {
        let (mut c, mut reader, _w) = connected().await;
        // Never connected-and-idle, then idle after a frame.
        assert_idle_without_buffer(&mut reader).await;
        c.write_all(&[0, 0, 0, 1, 7]).await.unwrap();
        assert_eq!(&reader.next().await.unwrap().unwrap()[..], &[0, 0, 0, 1, 7]);
        assert_idle_without_buffer(&mut reader).await;
    }

    #[tokio::test]
    async fn a_started_frame_waiting_for_its_rest_holds_only_its_bytes() {
        let (mut client, mut reader, _w) = connected().await;
        // Two bytes of a length prefix, then nothing.
        client.write_all(&[0, 0]).await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(100), reader.next()).await;
        assert!(waiting.is_err(), "no frame yet");
        assert_eq!(reader.buffered(), &[0, 0]);
        assert!(reader.capacity() < 64, "holds {} bytes", reader.capacity());
        // The rest arrives: one frame, as if nothing happened.
        let frame = rpc_codec::encode_message(rpc_codec::MessageType::Call, b"m", 7, b"body");
        client.write_all(&frame[2..]).await.unwrap();
        let got = reader.next().await.unwrap().unwrap();
        assert_eq!(&got[..], &frame[..]);
    }

    #[tokio::test]
    async fn a_header_announcing_a_large_frame_reserves_nothing_until_the_body_comes() {
        let (mut client, mut reader, _w) = connected().await;
        let len: u32 = 8 << 20;
        client.write_all(&len.to_be_bytes()).await.unwrap();
        client.write_all(&[1; 10]).await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(100), reader.next()).await;
        assert!(waiting.is_err(), "no frame yet");
        assert!(reader.capacity() < 64, "holds {} bytes", reader.capacity());
        // The body arrives: the frame is reserved whole and read.
        let body = vec![7u8; len as usize - 10];
        let writer = tokio::spawn(async move {
            client.write_all(&body).await.unwrap();
            client
        });
        let got = reader.next().await.unwrap().unwrap();
        assert_eq!(got.len(), 4 + len as usize);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn reads_grow_while_a_backlog_fills_them_and_the_buffer_goes_when_idle() {
        let (mut c, mut reader, _w) = connected().await;
        let frames = 1024u32;
        let writer = tokio::spawn(async move {
            let mut frame = vec![0u8; 4 + 4096];
            frame[..4].copy_from_slice(&4096u32.to_be_bytes());
            for _ in 0..frames {
                c.write_all(&frame).await.unwrap();
            }
            c
        });
        let mut largest = 0;
        for _ in 0..frames {
            let f = reader.next().await.unwrap().unwrap();
            assert_eq!(f.len(), 4 + 4096);
            largest = largest.max(reader.capacity());
        }
        let _c = writer.await.unwrap();
        // 4 MiB arrived faster than it was read: reads asked for more than
        // the 16 KiB they start with.
        assert!(largest >= 4 * MIN_CHUNK, "largest buffer {largest}");
        assert_idle_without_buffer(&mut reader).await;
    }

    #[tokio::test]
    async fn reads_frames_split_across_writes_and_reports_eof() {
        let (mut c, mut reader, _w) = connected().await;
        let writer = tokio::spawn(async move {
            let mut all = Vec::new();
            for i in 0..100u32 {
                all.extend_from_slice(&4u32.to_be_bytes());
                all.extend_from_slice(&i.to_be_bytes());
            }
            for chunk in all.chunks(7) {
                c.write_all(chunk).await.unwrap();
                c.flush().await.unwrap();
            }
        });
        for i in 0..100u32 {
            let f = reader.next().await.unwrap().unwrap();
            assert_eq!(&f[4..], &i.to_be_bytes());
        }
        writer.await.unwrap();
        assert!(reader.next().await.is_none());
    }

    #[tokio::test]
    async fn eof_inside_a_frame_is_an_error() {
        let (mut c, mut reader, _w) = connected().await;
        c.write_all(&[0, 0, 0, 9, 1, 2]).await.unwrap();
        drop(c);
        assert!(matches!(reader.next().await, Some(Err(FrameError::Io(_)))));
    }
}
