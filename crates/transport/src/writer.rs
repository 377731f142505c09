use std::collections::VecDeque;
use std::io::{self, IoSlice};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Most slices handed to one `writev` (Linux's IOV_MAX is 1024).
const MAX_IOV: usize = 64;

/// Queues whole frames and writes them with vectored I/O, many per system
/// call, without copying them into a staging buffer.
///
/// Once the queue empties the stream is flushed: a TLS session may hold
/// records it could not write yet, which only a flush (or a later write)
/// sends; until then the writer does not count as empty. For a socket the
/// flush is a no-op.
pub struct FrameWriter<W> {
    io: W,
    queue: VecDeque<Bytes>,
    queued_bytes: usize,
    /// Written since the last completed flush.
    unflushed: bool,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(io: W) -> Self {
        Self {
            io,
            queue: VecDeque::new(),
            queued_bytes: 0,
            unflushed: false,
        }
    }

    pub fn push(&mut self, frame: Bytes) {
        self.queued_bytes += frame.len();
        self.queue.push_back(frame);
    }

    /// Nothing queued, and everything written flushed.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty() && !self.unflushed
    }

    /// Frames queued (the front one possibly written in part).
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> io::Result<()> {
        while !self.queue.is_empty() {
            self.write_some().await?;
        }
        self.io.flush().await
    }

    /// One vectored write of as much of the queue as the socket takes.
    /// Cancel-safe (nothing is lost if the future is dropped before it
    /// completes), so a connection task can race it against reading and
    /// never stop reading while its peer is slow to read (two pipelining
    /// peers blocked on each other's full buffers would deadlock).
    pub async fn write_some(&mut self) -> io::Result<()> {
        if self.queue.is_empty() {
            return self.flush_written().await;
        }
        let n = {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut cnt = 0;
            for (slot, b) in iov.iter_mut().zip(self.queue.iter()) {
                *slot = IoSlice::new(b);
                cnt += 1;
            }
            self.io.write_vectored(&iov[..cnt]).await?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        self.consume(n);
        self.unflushed = true;
        if self.queue.is_empty() {
            return self.flush_written().await;
        }
        Ok(())
    }

    /// Flushes what was written (cancel-safe: a flush cut short is done
    /// again by the next call).
    async fn flush_written(&mut self) -> io::Result<()> {
        if self.unflushed {
            self.io.flush().await?;
            self.unflushed = false;
        }
        Ok(())
    }

    fn consume(&mut self, mut n: usize) {
        self.queued_bytes -= n;
        while n > 0 {
            let front = self.queue.front_mut().expect("wrote more than queued");
            if n >= front.len() {
                n -= front.len();
                self.queue.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.io
    }

    pub fn into_inner(self) -> W {
        self.io
    }
}

impl<W: AsyncWrite + Unpin> Extend<Bytes> for FrameWriter<W> {
    fn extend<I: IntoIterator<Item = Bytes>>(&mut self, frames: I) {
        for f in frames {
            self.push(f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_many_frames_in_order() {
        let mut w = FrameWriter::new(Vec::new());
        for i in 0..200u8 {
            w.push(Bytes::from(vec![i; (i as usize % 7) + 1]));
        }
        w.flush().await.unwrap();
        let out = w.into_inner();
        let mut expect = Vec::new();
        for i in 0..200u8 {
            expect.extend(std::iter::repeat_n(i, (i as usize % 7) + 1));
        }
        assert_eq!(out, expect);
    }
}
