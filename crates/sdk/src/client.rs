//! Calling services through the local proxy (SPEC §3).
//!
//! - [`ProxyClient`] gives the protocol pair a Thrift-generated sync client
//!   takes (`EchoSyncClient::new(i, o)`): framed transport, strict binary
//!   protocol, message names `service:method`.
//! - [`AsyncClient`] sends raw pipelined calls from async code.
//!
//! Both reconnect by themselves: a connection found broken is replaced on
//! the next call.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rpc_codec::{encode_message, FrameCodec, Message, MessageType};
use rpc_transport::{Address, FrameReader, FrameWriter, Stream};
use thrift::protocol::{TBinaryInputProtocol, TBinaryOutputProtocol, TMultiplexedOutputProtocol};
use tokio::sync::{mpsc, oneshot};

/// Input protocol of a [`ProxyClient`].
pub type ProxyInputProtocol = TBinaryInputProtocol<ProxyReader>;
/// Output protocol of a [`ProxyClient`]: names are sent as `service:method`.
pub type ProxyOutputProtocol = TMultiplexedOutputProtocol<TBinaryOutputProtocol<ProxyWriter>>;

/// A blocking connection to the local proxy for one service, for use with
/// Thrift-generated sync clients:
///
/// ```no_run
/// # use rpc_sdk::client::ProxyClient;
/// # use rpc_sdk::gen::echo::{EchoSyncClient, TEchoSyncClient};
/// # use std::time::Duration;
/// let addr = "127.0.0.1:5550".parse().unwrap();
/// let (i, o) = ProxyClient::connect(&addr, "echo", Duration::from_secs(15))?.into_protocols();
/// let mut echo = EchoSyncClient::new(i, o);
/// println!("{}", echo.echo("hi".into())?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// Before each request the connection is checked; one the proxy closed is
/// replaced, and a request whose write fails is resent once on a new
/// connection (an incomplete frame is never executed). A call that fails
/// while waiting for its reply returns the error; the next call reconnects.
pub struct ProxyClient {
    conn: Arc<Mutex<Conn>>,
    service: String,
}

impl ProxyClient {
    /// Connects now (so a wrong address fails here). `timeout` bounds the
    /// connect and every read and write.
    pub fn connect(addr: &Address, service: &str, timeout: Duration) -> io::Result<ProxyClient> {
        let mut conn = Conn {
            addr: addr.clone(),
            timeout,
            max_frame: rpc_codec::DEFAULT_MAX_FRAME,
            sock: None,
            wbuf: Vec::new(),
            rbuf: Vec::new(),
            rpos: 0,
        };
        conn.reconnect()?;
        Ok(ProxyClient {
            conn: Arc::new(Mutex::new(conn)),
            service: service.to_string(),
        })
    }

    /// Largest reply frame accepted (default 16,384,000 bytes).
    pub fn max_frame_size(self, n: usize) -> ProxyClient {
        self.conn.lock().unwrap().max_frame = n;
        self
    }

    /// The protocol pair for a generated client.
    pub fn into_protocols(self) -> (ProxyInputProtocol, ProxyOutputProtocol) {
        let input = TBinaryInputProtocol::new(ProxyReader(self.conn.clone()), true);
        let output = TMultiplexedOutputProtocol::new(
            &self.service,
            TBinaryOutputProtocol::new(ProxyWriter(self.conn), true),
        );
        (input, output)
    }
}

enum Sock {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl Sock {
    fn connect(addr: &Address, timeout: Duration) -> io::Result<Sock> {
        let s = match addr {
            Address::Tcp(a) => {
                use std::net::ToSocketAddrs;
                let mut last =
                    io::Error::new(io::ErrorKind::NotFound, format!("{a} resolves to nothing"));
                let mut found = None;
                for sa in a.to_socket_addrs()? {
                    match std::net::TcpStream::connect_timeout(&sa, timeout) {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                let s = found.ok_or(last)?;
                s.set_nodelay(true)?;
                Sock::Tcp(s)
            }
            Address::Unix(p) => Sock::Unix(std::os::unix::net::UnixStream::connect(p)?),
        };
        let t = Some(timeout).filter(|t| !t.is_zero());
        match &s {
            Sock::Tcp(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)?;
            }
            Sock::Unix(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)?;
            }
        }
        Ok(s)
    }

    /// An idle connection is usable if reading would block: EOF means the
    /// peer closed it, and unexpected bytes (a late reply to a call that
    /// timed out) would be mistaken for the next reply.
    fn idle_and_open(&self) -> bool {
        use std::os::fd::AsRawFd;
        let fd = match self {
            Sock::Tcp(s) => s.as_raw_fd(),
            Sock::Unix(s) => s.as_raw_fd(),
        };
        let mut b = [0u8; 1];
        // SAFETY: b is valid for writes of its length for the whole call.
        let n = unsafe {
            libc::recv(
                fd,
                b.as_mut_ptr() as *mut libc::c_void,
                b.len(),
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
    }
}

impl Read for Sock {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.read(b),
            Sock::Unix(s) => s.read(b),
        }
    }
}

impl Write for Sock {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.write(b),
            Sock::Unix(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The shared state behind a reader/writer pair: one socket, the frame
/// being written and the frame being read.
struct Conn {
    addr: Address,
    timeout: Duration,
    max_frame: usize,
    sock: Option<Sock>,
    wbuf: Vec<u8>,
    rbuf: Vec<u8>,
    rpos: usize,
}

impl Conn {
    fn reconnect(&mut self) -> io::Result<()> {
        self.sock = None;
        self.rbuf.clear();
        self.rpos = 0;
        self.sock = Some(Sock::connect(&self.addr, self.timeout)?);
        Ok(())
    }

    /// Sends the buffered message as one frame.
    fn send_frame(&mut self) -> io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let body = std::mem::take(&mut self.wbuf);
        let mut frame = Vec::with_capacity(4 + body.len());
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        let fresh = match &self.sock {
            Some(s) if s.idle_and_open() && self.rpos == self.rbuf.len() => false,
            _ => {
                self.reconnect()?;
                true
            }
        };
        match self.sock.as_mut().expect("connected").write_all(&frame) {
            Ok(()) => Ok(()),
            Err(e) if !fresh => {
                tracing::debug!(error = %e, "write failed; resending on a new connection");
                self.reconnect()?;
                self.write_or_drop(&frame)
            }
            Err(e) => {
                self.sock = None;
                Err(e)
            }
        }
    }

    fn write_or_drop(&mut self, frame: &[u8]) -> io::Result<()> {
        let r = self.sock.as_mut().expect("connected").write_all(frame);
        if r.is_err() {
            self.sock = None;
        }
        r
    }

    fn read_frame(&mut self) -> io::Result<()> {
        let sock = self
            .sock
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "connection lost"))?;
        let r = (|| {
            let mut len = [0u8; 4];
            sock.read_exact(&mut len)?;
            let n = i32::from_be_bytes(len);
            if n <= 0 || n as usize > self.max_frame {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad frame length {n} (maximum {})", self.max_frame),
                ));
            }
            self.rbuf.resize(n as usize, 0);
            sock.read_exact(&mut self.rbuf)
        })();
        self.rpos = 0;
        if r.is_err() {
            // Whatever arrives later on this socket would be out of step.
            self.sock = None;
            self.rbuf.clear();
        }
        r
    }
}

/// Read side of a [`ProxyClient`] (framed transport).
pub struct ProxyReader(Arc<Mutex<Conn>>);

impl Read for ProxyReader {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        let mut c = self.0.lock().unwrap();
        if c.rpos == c.rbuf.len() {
            c.read_frame()?;
        }
        let n = b.len().min(c.rbuf.len() - c.rpos);
        b[..n].copy_from_slice(&c.rbuf[c.rpos..c.rpos + n]);
        c.rpos += n;
        Ok(n)
    }
}

/// Write side of a [`ProxyClient`] (framed transport: a message is sent as
/// one frame on flush).
pub struct ProxyWriter(Arc<Mutex<Conn>>);

impl Write for ProxyWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().wbuf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.lock().unwrap().send_frame()
    }
}

/// Why an [`AsyncClient`] call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("connection lost before the reply")]
    Disconnected,
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("remote exception (type {kind}): {message}")]
    Exception { kind: i32, message: String },
    #[error("bad reply: {0}")]
    Protocol(String),
}

type Pending = oneshot::Sender<Result<Message, ClientError>>;

/// A frame to write and, for a call, the seqid and where its reply goes.
type Outgoing = (Bytes, Option<(i32, Pending)>);

/// A pipelined async connection to the proxy (or any SPEC endpoint) for
/// raw calls: the caller supplies the argument struct's bytes and gets
/// the reply message (whose body is the result struct). Calls from many
/// tasks share the connection; a broken connection is replaced on the
/// next call.
pub struct AsyncClient {
    addr: Address,
    timeout: Duration,
    max_frame: usize,
    seqid: AtomicI32,
    conn: tokio::sync::Mutex<Option<mpsc::Sender<Outgoing>>>,
}

impl AsyncClient {
    /// Connects now; calls time out after 15 s (see [`AsyncClient::timeout`]).
    pub async fn connect(addr: &Address) -> Result<AsyncClient, ClientError> {
        let c = AsyncClient {
            addr: addr.clone(),
            timeout: Duration::from_secs(15),
            max_frame: rpc_codec::DEFAULT_MAX_FRAME,
            seqid: AtomicI32::new(0),
            conn: tokio::sync::Mutex::new(None),
        };
        c.sender().await?;
        Ok(c)
    }

    /// Per-call deadline.
    pub fn timeout(mut self, d: Duration) -> AsyncClient {
        self.timeout = d;
        self
    }

    pub fn max_frame_size(mut self, n: usize) -> AsyncClient {
        self.max_frame = n;
        self
    }

    /// Calls `service_method` (`service:method`) with `args` (the argument
    /// struct, serialized) and returns the `REPLY`; an `EXCEPTION` reply
    /// becomes [`ClientError::Exception`].
    pub async fn call(&self, service_method: &str, args: &[u8]) -> Result<Message, ClientError> {
        let seqid = self.next_seqid();
        let frame =
            encode_message(MessageType::Call, service_method.as_bytes(), seqid, args).freeze();
        let (tx, rx) = oneshot::channel();
        self.send(frame, Some((seqid, tx))).await?;
        let reply = match tokio::time::timeout(self.timeout, rx).await {
            Err(_) => return Err(ClientError::Timeout(self.timeout)),
            Ok(Err(_)) => return Err(ClientError::Disconnected),
            Ok(Ok(r)) => r?,
        };
        match reply.kind() {
            MessageType::Reply => Ok(reply),
            MessageType::Exception => {
                let e = rpc_codec::read_application_exception(reply.body())
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                Err(ClientError::Exception {
                    kind: e.kind,
                    message: e.message,
                })
            }
            other => Err(ClientError::Protocol(format!("unexpected {other:?} reply"))),
        }
    }

    /// Sends a oneway call (no reply).
    pub async fn oneway(&self, service_method: &str, args: &[u8]) -> Result<(), ClientError> {
        let seqid = self.next_seqid();
        let frame =
            encode_message(MessageType::Oneway, service_method.as_bytes(), seqid, args).freeze();
        self.send(frame, None).await
    }

    /// Whether a connection is open now (a closed one is replaced by the
    /// next call).
    pub async fn is_connected(&self) -> bool {
        self.conn
            .lock()
            .await
            .as_ref()
            .is_some_and(|tx| !tx.is_closed())
    }

    fn next_seqid(&self) -> i32 {
        self.seqid.fetch_add(1, Ordering::Relaxed).wrapping_add(1)
    }

    async fn send(&self, frame: Bytes, pending: Option<(i32, Pending)>) -> Result<(), ClientError> {
        let tx = self.sender().await?;
        tx.send((frame, pending))
            .await
            .map_err(|_| ClientError::Disconnected)
    }

    /// The live connection's queue, connecting first if there is none.
    async fn sender(&self) -> Result<mpsc::Sender<Outgoing>, ClientError> {
        let mut guard = self.conn.lock().await;
        if let Some(tx) = guard.as_ref().filter(|tx| !tx.is_closed()) {
            return Ok(tx.clone());
        }
        let connect = tokio::time::timeout(self.timeout, Stream::connect(&self.addr));
        let stream = match connect.await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => {
                return Err(ClientError::Connect {
                    addr: self.addr.to_string(),
                    source,
                })
            }
            Err(_) => {
                return Err(ClientError::Connect {
                    addr: self.addr.to_string(),
                    source: io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
                })
            }
        };
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(async_conn(stream, rx, self.max_frame));
        *guard = Some(tx.clone());
        Ok(tx)
    }
}

/// Owns one connection: writes queued calls, matches replies by seqid.
async fn async_conn(stream: Stream, mut rx: mpsc::Receiver<Outgoing>, max_frame: usize) {
    let (r, w) = stream.into_split();
    let mut reader = FrameReader::new(r, FrameCodec::new(max_frame));
    let mut writer = FrameWriter::new(w);
    let mut pending: HashMap<i32, Pending> = HashMap::new();
    let mut queue = Vec::new();
    loop {
        tokio::select! {
            n = rx.recv_many(&mut queue, 256) => {
                if n == 0 {
                    break; // the client is gone
                }
                for (frame, p) in queue.drain(..) {
                    if let Some((seqid, tx)) = p {
                        if pending.len() >= 1024 {
                            pending.retain(|_, t| !t.is_closed());
                        }
                        pending.insert(seqid, tx);
                    }
                    writer.push(frame);
                }
                if let Err(e) = writer.flush().await {
                    tracing::debug!(error = %e, "write failed");
                    break;
                }
            }
            f = reader.next() => {
                let frame = match f {
                    Some(Ok(f)) => f,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "read failed");
                        break;
                    }
                    None => break,
                };
                match Message::parse(frame) {
                    Ok(m) => {
                        if let Some(tx) = pending.remove(&m.seqid()) {
                            let _ = tx.send(Ok(m));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "bad reply; closing connection");
                        break;
                    }
                }
            }
        }
    }
    rx.close();
    for (_, tx) in pending.drain() {
        let _ = tx.send(Err(ClientError::Disconnected));
    }
    // Calls queued but never written fail too.
    while let Ok((_, p)) = rx.try_recv() {
        if let Some((_, tx)) = p {
            let _ = tx.send(Err(ClientError::Disconnected));
        }
    }
}
