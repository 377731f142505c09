//! Handing a server's sockets to its successor, for upgrades that drop
//! nothing.
//!
//! A running server listens on a control socket (a Unix socket in its work
//! directory). A successor started with `--upgrade` connects to it and:
//!
//! 1. receives every listening socket (`SCM_RIGHTS`) and starts accepting
//!    on them: the sockets never close, so no connection is refused;
//! 2. says it is ready; only then does the old server stop accepting (a
//!    successor that fails before this point leaves the old one serving);
//! 3. receives each client connection of the old server once it sits
//!    between two requests (every request it read answered), with the bytes
//!    of a frame already read, and serves it on: clients notice nothing;
//! 4. learns that nothing more comes, and takes the control socket over;
//!    a server whose successor must act before it may exit (the LB's
//!    successor registers the endpoint) waits until it says it has.
//!
//! Every message on the control socket is `[u32 note length][u32 data
//! length][note: JSON][data]`, a descriptor riding on its first byte.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use bytes::BytesMut;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};

use crate::stream::SocketFile;
use crate::{Address, Listener, Stream};

/// Unix socket paths this process's listeners must not remove when they
/// close: handed to a successor (theirs now), or taken from a predecessor
/// that still serves on them until we are ready.
static NOT_OURS: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

fn not_ours() -> std::sync::MutexGuard<'static, BTreeSet<PathBuf>> {
    NOT_OURS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether a listener closing may remove its socket file at `path`.
pub(crate) fn owns_path(path: &Path) -> bool {
    !not_ours().contains(path)
}

fn unix_paths<'a>(addresses: impl IntoIterator<Item = &'a Address>) -> Vec<PathBuf> {
    addresses
        .into_iter()
        .filter_map(|a| match a {
            Address::Unix(p) => Some(p.clone()),
            Address::Tcp(_) => None,
        })
        .collect()
}

/// Largest note or data part accepted (a frame already read in part is at
/// most one `max_frame_size`; the bound only guards against garbage).
const MAX_PART: usize = 64 << 20;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "note", rename_all = "snake_case")]
enum Note {
    /// Successor → old: please hand over.
    Upgrade { pid: u32 },
    /// Old → successor: a listening socket (descriptor attached); `status`
    /// for the HTTP status page's.
    Listener {
        address: String,
        #[serde(default)]
        status: bool,
    },
    /// Old → successor: that was every listener.
    ListenersDone,
    /// Successor → old: accepting on them.
    Ready,
    /// Old → successor: a client connection (descriptor attached; data:
    /// bytes already read from it).
    Connection { unix: bool },
    /// Old → successor: nothing more comes.
    Done,
    /// Successor → old: everything taken over; the old server may go.
    Finished,
}

/// The control socket's path for a server whose first listening address
/// is `first`: one per configuration, in the work directory.
pub fn control_path(program: &str, first: &Address) -> PathBuf {
    let name: String = first
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    // Unix socket paths are short (108 bytes); keep the end, which differs.
    let tail = &name[name.len().saturating_sub(60)..];
    PathBuf::from(format!(".{program}.{tail}.upgrade"))
}

/// The old server's side: the control socket it listens on.
pub struct Handoff {
    listener: UnixListener,
    path: PathBuf,
}

impl Handoff {
    /// Listens on `path` (a stale file there is replaced).
    pub fn listen(path: &Path) -> io::Result<Handoff> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(Handoff {
            listener: UnixListener::bind(path)?,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next successor asking to take over.
    pub async fn accept(&self) -> io::Result<Upgrade> {
        loop {
            let (stream, _) = self.listener.accept().await?;
            let mut ch = Channel { stream };
            match ch.recv().await {
                Ok((Note::Upgrade { pid }, _, _)) => {
                    return Ok(Upgrade {
                        ch,
                        pid,
                        paths: Vec::new(),
                    })
                }
                Ok((other, _, _)) => {
                    tracing::warn!(?other, "unexpected note on the control socket")
                }
                Err(e) => tracing::warn!(error = %e, "bad upgrade request"),
            }
        }
    }
}

/// One successor taking over, seen from the old server.
pub struct Upgrade {
    ch: Channel,
    pub pid: u32,
    /// Unix paths handed over, the successor's once it is ready.
    paths: Vec<PathBuf>,
}

impl Upgrade {
    /// Hands every listener over (they keep accepting here too until
    /// [`Upgrade::wait_ready`] returns), and the status page's (TCP).
    pub async fn send_listeners(
        &mut self,
        listeners: &[(Address, RawFd)],
        status: Option<RawFd>,
    ) -> io::Result<()> {
        self.paths = unix_paths(listeners.iter().map(|(a, _)| a));
        let status = status.map(|fd| (Address::Tcp(String::new()), fd, true));
        let all = listeners.iter().map(|(a, fd)| (a.clone(), *fd, false));
        for (address, fd, status) in all.chain(status) {
            let note = Note::Listener {
                address: address.to_string(),
                status,
            };
            self.ch.send(&note, &[], Some(fd)).await?;
        }
        self.ch.send(&Note::ListenersDone, &[], None).await
    }

    /// Waits until the successor accepts on the listeners; from then on
    /// their paths are its own.
    pub async fn wait_ready(&mut self) -> io::Result<()> {
        match self.ch.recv().await? {
            (Note::Ready, _, _) => {
                not_ours().extend(self.paths.iter().cloned());
                Ok(())
            }
            (other, _, _) => Err(bad(format!("expected ready, got {other:?}"))),
        }
    }

    /// Hands a client connection over between two requests, with the
    /// bytes already read from it. Our copy closes without a FIN: the
    /// successor's keeps the connection open.
    /// A TLS session cannot be passed (its keys live in this process):
    /// refused with `Unsupported`, the connection left to the caller.
    pub async fn send_connection(&mut self, stream: Stream, buffered: &[u8]) -> io::Result<()> {
        if stream.is_tls() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a TLS connection cannot be handed over",
            ));
        }
        let unix = matches!(stream, Stream::Unix(_));
        self.ch
            .send(
                &Note::Connection { unix },
                buffered,
                Some(stream.as_raw_fd()),
            )
            .await
    }

    /// Tells the successor nothing more comes.
    pub async fn done(mut self) -> io::Result<()> {
        self.ch.send(&Note::Done, &[], None).await
    }

    /// [`Upgrade::done`], then waits until the successor says it has taken
    /// everything over ([`Takeover::finished`]).
    pub async fn done_and_wait(mut self) -> io::Result<()> {
        self.ch.send(&Note::Done, &[], None).await?;
        match self.ch.recv().await? {
            (Note::Finished, _, _) => Ok(()),
            (other, _, _) => Err(bad(format!("expected finished, got {other:?}"))),
        }
    }
}

/// The successor's side, after the listeners arrived.
pub struct Takeover {
    ch: Channel,
    /// Unix paths taken over, ours once we are ready.
    paths: Vec<PathBuf>,
}

/// What a successor takes over before it starts.
pub struct Taken {
    pub listeners: Vec<Listener>,
    /// The status page's listener, if the old server had one.
    pub status: Option<tokio::net::TcpListener>,
}

/// Connects to the server listening on `path` and takes its listeners.
pub async fn take_over(path: &Path) -> io::Result<(Taken, Takeover)> {
    let stream = UnixStream::connect(path).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("no running server to upgrade at {}: {e}", path.display()),
        )
    })?;
    let mut ch = Channel { stream };
    let pid = std::process::id();
    ch.send(&Note::Upgrade { pid }, &[], None).await?;
    let mut taken = Taken {
        listeners: Vec::new(),
        status: None,
    };
    loop {
        match ch.recv().await? {
            (Note::Listener { status: true, .. }, _, Some(fd)) => {
                let l = std::net::TcpListener::from(fd);
                l.set_nonblocking(true)?;
                taken.status = Some(tokio::net::TcpListener::from_std(l)?);
            }
            (Note::Listener { address, .. }, _, Some(fd)) => {
                let address: Address = address
                    .parse()
                    .map_err(|e| bad(format!("listener address {address:?}: {e}")))?;
                // Still the predecessor's: if we fail before ready, closing
                // our copies must not remove its socket files.
                not_ours().extend(unix_paths([&address]));
                taken.listeners.push(listener_from(fd, address)?);
            }
            (Note::ListenersDone, _, _) => {
                let paths = taken.listeners.iter().map(Listener::local_address);
                let paths = unix_paths(&paths.collect::<Vec<_>>());
                return Ok((taken, Takeover { ch, paths }));
            }
            (other, _, _) => return Err(bad(format!("expected a listener, got {other:?}"))),
        }
    }
}

impl Takeover {
    /// Tells the old server we accept; it stops accepting and starts
    /// handing its connections over.
    pub async fn ready(&mut self) -> io::Result<()> {
        self.ch.send(&Note::Ready, &[], None).await?;
        let mut not_ours = not_ours();
        for p in &self.paths {
            not_ours.remove(p);
        }
        Ok(())
    }

    /// The next client connection and the bytes already read from it;
    /// `None` once the old server handed everything over.
    pub async fn next_connection(&mut self) -> io::Result<Option<(Stream, BytesMut)>> {
        match self.ch.recv().await? {
            (Note::Connection { unix }, data, Some(fd)) => {
                Ok(Some((stream_from(fd, unix)?, BytesMut::from(&data[..]))))
            }
            (Note::Done, _, _) => Ok(None),
            (other, _, _) => Err(bad(format!("expected a connection, got {other:?}"))),
        }
    }

    /// Tells the old server, once [`Takeover::next_connection`] returned
    /// `None`, that everything is taken over (it may be waiting for this in
    /// [`Upgrade::done_and_wait`]).
    pub async fn finished(mut self) -> io::Result<()> {
        self.ch.send(&Note::Finished, &[], None).await
    }
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn listener_from(fd: OwnedFd, address: Address) -> io::Result<Listener> {
    Ok(match address {
        Address::Tcp(_) => {
            let l = std::net::TcpListener::from(fd);
            l.set_nonblocking(true)?;
            Listener::Tcp(tokio::net::TcpListener::from_std(l)?)
        }
        Address::Unix(path) => {
            let l = std::os::unix::net::UnixListener::from(fd);
            l.set_nonblocking(true)?;
            Listener::Unix(UnixListener::from_std(l)?, SocketFile::new(path))
        }
    })
}

fn stream_from(fd: OwnedFd, unix: bool) -> io::Result<Stream> {
    Ok(if unix {
        let s = std::os::unix::net::UnixStream::from(fd);
        s.set_nonblocking(true)?;
        Stream::Unix(UnixStream::from_std(s)?)
    } else {
        let s = std::net::TcpStream::from(fd);
        s.set_nonblocking(true)?;
        let s = tokio::net::TcpStream::from_std(s)?;
        s.set_nodelay(true)?;
        Stream::Tcp(s)
    })
}

/// The control connection: notes, data and descriptors.
struct Channel {
    stream: UnixStream,
}

impl Channel {
    async fn send(&mut self, note: &Note, data: &[u8], fd: Option<RawFd>) -> io::Result<()> {
        let note = serde_json::to_vec(note).map_err(|e| bad(e.to_string()))?;
        let mut head = [0u8; 8];
        head[..4].copy_from_slice(&(note.len() as u32).to_be_bytes());
        head[4..].copy_from_slice(&(data.len() as u32).to_be_bytes());
        // The descriptor rides on the header's first byte; the header goes
        // in one sendmsg so the receiver's first read carries both.
        let mut sent = 0;
        while sent == 0 {
            let raw = self.stream.as_raw_fd();
            let fds = fd.map(|f| [f]);
            sent = self
                .stream
                .async_io(Interest::WRITABLE, || {
                    let iov = [io::IoSlice::new(&head)];
                    let cmsgs: Vec<ControlMessage> = fds
                        .as_ref()
                        .map(|f| vec![ControlMessage::ScmRights(f)])
                        .unwrap_or_default();
                    sendmsg::<()>(raw, &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None)
                        .map_err(io::Error::from)
                })
                .await?;
        }
        self.stream.write_all(&head[sent..]).await?;
        self.stream.write_all(&note).await?;
        self.stream.write_all(data).await
    }

    async fn recv(&mut self) -> io::Result<(Note, Vec<u8>, Option<OwnedFd>)> {
        let mut head = [0u8; 8];
        let raw = self.stream.as_raw_fd();
        let (got, fd) = self
            .stream
            .async_io(Interest::READABLE, || {
                let mut space = nix::cmsg_space!([RawFd; 1]);
                let mut iov = [io::IoSliceMut::new(&mut head)];
                let msg =
                    recvmsg::<()>(raw, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
                        .map_err(io::Error::from)?;
                let mut fd = None;
                for c in msg.cmsgs().map_err(io::Error::from)? {
                    if let ControlMessageOwned::ScmRights(fds) = c {
                        for f in fds {
                            // SAFETY: the kernel just gave us this descriptor.
                            let owned = unsafe { OwnedFd::from_raw_fd(f) };
                            fd.get_or_insert(owned);
                        }
                    }
                }
                Ok((msg.bytes, fd))
            })
            .await?;
        if got == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "control connection closed",
            ));
        }
        self.stream.read_exact(&mut head[got..]).await?;
        let note_len = u32::from_be_bytes(head[..4].try_into().expect("4 bytes")) as usize;
        let data_len = u32::from_be_bytes(head[4..].try_into().expect("4 bytes")) as usize;
        if note_len > MAX_PART || data_len > MAX_PART {
            return Err(bad(format!(
                "oversized control message ({note_len} + {data_len} bytes)"
            )));
        }
        let mut note = vec![0u8; note_len];
        self.stream.read_exact(&mut note).await?;
        let mut data = vec![0u8; data_len];
        self.stream.read_exact(&mut data).await?;
        let note = serde_json::from_slice(&note).map_err(|e| bad(e.to_string()))?;
        Ok((note, data, fd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn listeners_and_a_connection_with_its_read_bytes_change_hands() {
        let dir = tempfile::tempdir().unwrap();
        let control = dir.path().join("control");
        let old = Handoff::listen(&control).unwrap();
        let tcp = Listener::bind(&"127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let unix = Listener::bind(&Address::Unix(dir.path().join("l.sock")))
            .await
            .unwrap();
        let (tcp_addr, unix_addr) = (tcp.local_address(), unix.local_address());
        // A client connection the old side has read 3 bytes from.
        let mut client = Stream::connect(&tcp_addr).await.unwrap();
        let mut served = tcp.accept().await.unwrap();
        client.write_all(b"abcdef").await.unwrap();
        let mut first = [0u8; 3];
        served.read_exact(&mut first).await.unwrap();

        let successor = tokio::spawn(async move { take_over(&control).await.unwrap() });
        let mut up = old.accept().await.unwrap();
        assert_eq!(up.pid, std::process::id());
        let fds = [
            (tcp_addr.clone(), tcp.as_raw_fd()),
            (unix_addr.clone(), unix.as_raw_fd()),
        ];
        up.send_listeners(&fds, None).await.unwrap();
        let (taken, mut takeover) = successor.await.unwrap();
        assert_eq!(taken.listeners.len(), 2);
        assert!(taken.status.is_none());
        assert_eq!(taken.listeners[1].local_address(), unix_addr);
        takeover.ready().await.unwrap();
        up.wait_ready().await.unwrap();
        up.send_connection(served, &first).await.unwrap();
        up.done().await.unwrap();

        let (mut adopted, read) = takeover.next_connection().await.unwrap().unwrap();
        assert_eq!(&read[..], b"abc");
        let mut rest = [0u8; 3];
        adopted.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"def");
        adopted.write_all(b"ok").await.unwrap();
        let mut reply = [0u8; 2];
        client.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"ok");
        assert!(takeover.next_connection().await.unwrap().is_none());
        // The handed listeners accept in the successor.
        let _c = Stream::connect(&tcp_addr).await.unwrap();
        taken.listeners[0].accept().await.unwrap();
        drop((tcp, unix));
    }

    #[tokio::test]
    async fn the_old_side_can_wait_until_the_successor_has_finished() {
        let dir = tempfile::tempdir().unwrap();
        let control = dir.path().join("control");
        let old = Handoff::listen(&control).unwrap();
        // (No ready: `wait_ready` marks this whole test process's Unix
        // socket paths as handed over.)
        let successor = tokio::spawn(async move {
            let (_taken, mut takeover) = take_over(&control).await.unwrap();
            assert!(takeover.next_connection().await.unwrap().is_none());
            takeover.finished().await.unwrap();
        });
        let mut up = old.accept().await.unwrap();
        up.send_listeners(&[], None).await.unwrap();
        up.done_and_wait().await.unwrap();
        successor.await.unwrap();
    }

    #[tokio::test]
    async fn a_successor_that_goes_away_before_ready_leaves_the_old_side_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let control = dir.path().join("control");
        let old = Handoff::listen(&control).unwrap();
        let sock = dir.path().join("old.sock");
        let l = Listener::bind(&Address::Unix(sock.clone())).await.unwrap();
        let successor = tokio::spawn(async move {
            let (taken, takeover) = take_over(&control).await.unwrap();
            drop((taken, takeover));
        });
        let mut up = old.accept().await.unwrap();
        up.send_listeners(&[(l.local_address(), l.as_raw_fd())], None)
            .await
            .unwrap();
        successor.await.unwrap();
        assert!(up.wait_ready().await.is_err());
        // (Both sides share this process here, so the old side's own
        // removal of the path is not checked: it is a separate process.)
        assert!(
            sock.exists(),
            "the successor's copy left the old socket file"
        );
        drop(l);
    }

    #[test]
    fn control_paths_differ_per_address_and_stay_short() {
        let a = control_path("rpc-proxy", &"127.0.0.1:5550".parse().unwrap());
        let b = control_path("rpc-proxy", &"127.0.0.1:5551".parse().unwrap());
        assert_ne!(a, b);
        let long = Address::Unix(PathBuf::from(format!("/{}", "x".repeat(300))));
        assert!(control_path("rpc-lb", &long).as_os_str().len() < 100);
    }
}
