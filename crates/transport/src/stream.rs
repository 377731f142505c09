use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

use crate::Address;

/// The TLS session over a connected stream (see [`crate::tls`]).
pub type TlsStream = tokio_rustls::TlsStream<Stream>;

/// A connected TCP or Unix stream, or a TLS session over one. The TLS
/// variant is boxed: plain streams keep their size and pay one more
/// match arm, nothing else.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<TlsStream>),
}

impl Stream {
    /// Connects; TCP streams get `TCP_NODELAY` since every frame is a
    /// latency-sensitive request or reply.
    pub async fn connect(addr: &Address) -> io::Result<Stream> {
        match addr {
            Address::Tcp(a) => {
                let s = TcpStream::connect(a.as_str()).await?;
                // Dialling an unbound port of the ephemeral range on the
                // same host can connect a socket to itself (TCP
                // simultaneous open); that holds the port the peer is about
                // to bind and answers nothing: refused, like the dial was.
                if s.local_addr()? == s.peer_addr()? {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        format!("connecting to {a} reached this socket itself (nothing listens)"),
                    ));
                }
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }
            Address::Unix(p) => Ok(Stream::Unix(UnixStream::connect(p).await?)),
        }
    }

    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Tcp(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            Stream::Unix(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Unix(r), WriteHalf::Unix(w))
            }
            Stream::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (ReadHalf::Tls(r), WriteHalf::Tls(w))
            }
        }
    }

    /// Puts the halves of one [`Stream::into_split`] back together.
    pub fn reunite(r: ReadHalf, w: WriteHalf) -> io::Result<Stream> {
        let mismatch = || io::Error::new(io::ErrorKind::InvalidInput, "halves of two streams");
        match (r, w) {
            (ReadHalf::Tcp(r), WriteHalf::Tcp(w)) => {
                r.reunite(w).map(Stream::Tcp).map_err(|_| mismatch())
            }
            (ReadHalf::Unix(r), WriteHalf::Unix(w)) => {
                r.reunite(w).map(Stream::Unix).map_err(|_| mismatch())
            }
            (ReadHalf::Tls(r), WriteHalf::Tls(w)) if r.is_pair_of(&w) => {
                Ok(Stream::Tls(Box::new(r.unsplit(w))))
            }
            _ => Err(mismatch()),
        }
    }

    /// The peer's process id, where the kernel tells it (a Unix socket's
    /// `SO_PEERCRED`); a TCP peer's is not known here.
    pub fn peer_pid(&self) -> Option<u32> {
        match self {
            Stream::Unix(s) => s.peer_cred().ok()?.pid().map(|p| p as u32),
            Stream::Tcp(_) => None,
            Stream::Tls(s) => s.get_ref().0.peer_pid(),
        }
    }

    /// Local and peer socket addresses of a TCP stream.
    pub fn tcp_addrs(&self) -> Option<(std::net::SocketAddr, std::net::SocketAddr)> {
        match self {
            Stream::Tcp(s) => Some((s.local_addr().ok()?, s.peer_addr().ok()?)),
            Stream::Unix(_) => None,
            Stream::Tls(s) => s.get_ref().0.tcp_addrs(),
        }
    }

    pub fn peer(&self) -> String {
        match self {
            Stream::Tcp(s) => s
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "tcp:?".into()),
            Stream::Unix(_) => "unix".into(),
            Stream::Tls(s) => s.get_ref().0.peer(),
        }
    }

    /// Whether this is a TLS session (which cannot be handed to another
    /// process: its keys live in this one).
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }
}

/// Owned read half of a [`Stream`].
#[derive(Debug)]
pub enum ReadHalf {
    Tcp(tokio::net::tcp::OwnedReadHalf),
    Unix(tokio::net::unix::OwnedReadHalf),
    Tls(tokio::io::ReadHalf<TlsStream>),
}

impl ReadHalf {
    /// Waits until a read would not block. A TLS session returns at once:
    /// bytes on the socket need not make a record, so its reads wait
    /// themselves (`poll_read`).
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            ReadHalf::Tcp(s) => s.readable().await,
            ReadHalf::Unix(s) => s.readable().await,
            ReadHalf::Tls(_) => Ok(()),
        }
    }

    /// Reads what is available without waiting (`WouldBlock` if nothing).
    /// Not for TLS sessions (`Unsupported`): read them with `poll_read`.
    pub fn try_read_buf(&self, buf: &mut bytes::BytesMut) -> io::Result<usize> {
        match self {
            ReadHalf::Tcp(s) => s.try_read_buf(buf),
            ReadHalf::Unix(s) => s.try_read_buf(buf),
            ReadHalf::Tls(_) => Err(io::ErrorKind::Unsupported.into()),
        }
    }
}

/// Owned write half of a [`Stream`].
#[derive(Debug)]
pub enum WriteHalf {
    Tcp(tokio::net::tcp::OwnedWriteHalf),
    Unix(tokio::net::unix::OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<TlsStream>),
}

macro_rules! delegate_read {
    ($t:ty) => {
        impl AsyncRead for $t {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
                    Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
                    Self::Tls(s) => Pin::new(s).poll_read(cx, buf),
                }
            }
        }
    };
}

macro_rules! delegate_write {
    ($t:ty) => {
        impl AsyncWrite for $t {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
                    Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
                    Self::Tls(s) => Pin::new(s).poll_write(cx, buf),
                }
            }
            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                    Self::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                    Self::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                }
            }
            fn is_write_vectored(&self) -> bool {
                true
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_flush(cx),
                    Self::Unix(s) => Pin::new(s).poll_flush(cx),
                    Self::Tls(s) => Pin::new(s).poll_flush(cx),
                }
            }
            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
                    Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
                    Self::Tls(s) => Pin::new(s).poll_shutdown(cx),
                }
            }
        }
    };
}

delegate_read!(Stream);
delegate_read!(ReadHalf);
delegate_write!(Stream);
delegate_write!(WriteHalf);

/// A TCP or Unix listener.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, SocketFile),
}

/// The file a Unix listener is bound at, and which file it was then: once
/// another process has bound the path (a rolled-back predecessor, say),
/// the file is that process's, and ours to leave alone.
#[derive(Debug)]
pub struct SocketFile {
    path: std::path::PathBuf,
    /// (device, inode) when bound or adopted.
    id: Option<(u64, u64)>,
}

impl SocketFile {
    pub(crate) fn new(path: std::path::PathBuf) -> SocketFile {
        let id = file_id(&path);
        SocketFile { path, id }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Whether the path still names the file we bound.
    fn still_ours(&self) -> bool {
        self.id.is_some() && file_id(&self.path) == self.id
    }
}

fn file_id(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

impl Listener {
    /// Binds; a stale Unix socket file is removed first (SPEC §1).
    pub async fn bind(addr: &Address) -> io::Result<Listener> {
        match addr {
            Address::Tcp(a) => Ok(Listener::Tcp(TcpListener::bind(a.as_str()).await?)),
            Address::Unix(p) => {
                match std::fs::remove_file(p) {
                    Ok(()) => tracing::debug!(path = %p.display(), "removed stale socket file"),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
                let listener = UnixListener::bind(p)?;
                Ok(Listener::Unix(listener, SocketFile::new(p.clone())))
            }
        }
    }

    /// Binds, giving a Unix socket file the permissions `mode` (who may
    /// connect: connecting needs write permission).
    pub async fn bind_with_mode(addr: &Address, mode: u32) -> io::Result<Listener> {
        let l = Self::bind(addr).await?;
        if let Listener::Unix(_, f) = &l {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(mode))?;
        }
        Ok(l)
    }

    /// The address actually bound (resolves port 0).
    pub fn local_address(&self) -> Address {
        match self {
            Listener::Tcp(l) => {
                Address::Tcp(l.local_addr().map(|a| a.to_string()).unwrap_or_default())
            }
            Listener::Unix(_, f) => Address::Unix(f.path.clone()),
        }
    }

    pub async fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }
            Listener::Unix(l, _) => Ok(Stream::Unix(l.accept().await?.0)),
        }
    }
}

impl std::os::fd::AsRawFd for Listener {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        match self {
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Unix(l, _) => l.as_raw_fd(),
        }
    }
}

impl std::os::fd::AsRawFd for Stream {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tls(s) => s.get_ref().0.as_raw_fd(),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, f) = self {
            // Not after an upgrade handed it over (the path is the
            // successor's), nor before one we take part in is ready, nor
            // once another process bound the path.
            if crate::handoff::owns_path(&f.path) && f.still_ours() {
                let _ = std::fs::remove_file(&f.path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A stop removes the socket file it bound, but not one another
    /// process bound at the path since (rolling back to a predecessor
    /// that took the path over must not lose it its address).
    #[tokio::test]
    async fn a_dropped_unix_listener_removes_only_its_own_socket_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let addr = Address::Unix(path.clone());
        drop(Listener::bind(&addr).await.unwrap());
        assert!(!path.exists(), "our own file is removed");

        let ours = Listener::bind(&addr).await.unwrap();
        std::fs::remove_file(&path).unwrap();
        let theirs = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(ours);
        assert!(path.exists(), "another process's file stays");
        let _c = std::os::unix::net::UnixStream::connect(&path).unwrap();
        assert!(theirs.accept().is_ok());
    }

    #[tokio::test]
    async fn unix_listener_replaces_stale_socket_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        std::fs::write(&path, b"stale").unwrap();
        let addr = Address::Unix(path.clone());
        let l = Listener::bind(&addr).await.unwrap();
        let mut c = Stream::connect(&addr).await.unwrap();
        let mut s = l.accept().await.unwrap();
        c.write_all(b"hi").await.unwrap();
        let mut b = [0u8; 2];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"hi");
        drop(l);
        assert!(!path.exists());
    }
}
