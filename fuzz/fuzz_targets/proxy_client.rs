//! The proxy's client connection (the `ClientConn` hop on the engine's
//! loop) fed arbitrary byte streams, through a real in-process proxy: an
//! in-memory registry lists `echo` (an endpoint on a Unix socket that
//! answers every call with its own body) and `down` (no endpoint).
//!
//! Each input is one connection: its first bytes handed over as already
//! read (an upgrade's adopted connection), the rest written in chunks,
//! then the client closes its side. The proxy must answer exactly as
//! SPEC §3 says, in request order: an echo call with the reply its
//! endpoint gave (bare method, the client's seqid, the body), any other
//! call with an exception naming the bare method, a heartbeat with its
//! reply, a oneway with nothing, a response or stop message with a
//! PROTOCOL_ERROR; the first bad frame or header with a PROTOCOL_ERROR
//! exception, last; and then close the connection.
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rpc_codec::{
    encode_message, heartbeat_reply, read_application_exception, FrameCodec, Message, MessageType,
};
use rpc_config::Config;
use rpc_fuzz::{chunks, reference_frames, runtime, Cursor, Tail};
use rpc_proxy::ProxyHandle;
use rpc_registry::Endpoint;
use rpc_testkit::MemRegistry;
use rpc_transport::{Address, FrameReader, Listener, Stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MAX_FRAME: usize = 64 * 1024;

struct Fixture {
    proxy: ProxyHandle,
    _registry: MemRegistry,
    _dir: tempfile::TempDir,
}

thread_local! {
    static FIXTURE: &'static Fixture = Box::leak(Box::new(runtime().block_on(start())));
}

/// The endpoint: every call answered at once with its name, seqid and
/// body; heartbeats echoed; oneways taken. Whatever the proxy forwards
/// must be a valid message of those kinds.
async fn serve_echo(stream: Stream) {
    let (r, mut w) = stream.into_split();
    let mut reader = FrameReader::new(r, FrameCodec::new(1 << 20));
    while let Some(first) = reader.next().await {
        let mut out = Vec::new();
        let mut frame = Some(first);
        while let Some(f) = frame {
            let f = f.expect("the proxy forwards whole frames");
            let m = Message::parse(f).expect("the proxy forwards valid messages");
            match m.kind() {
                MessageType::Call => out.extend_from_slice(&encode_message(
                    MessageType::Reply,
                    m.name(),
                    m.seqid(),
                    m.body(),
                )),
                MessageType::Heartbeat => out.extend_from_slice(m.as_frame()),
                MessageType::Oneway => {}
                other => panic!("the proxy forwarded a {other:?}"),
            }
            frame = reader.next_buffered();
        }
        if w.write_all(&out).await.is_err() {
            return;
        }
    }
}

async fn start() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let echo = Address::Unix(dir.path().join("echo.sock"));
    let listener = Listener::bind(&echo).await.unwrap();
    tokio::spawn(async move {
        while let Ok(s) = listener.accept().await {
            tokio::spawn(serve_echo(s));
        }
    });
    let registry = MemRegistry::new();
    registry.set("echo", vec![Endpoint::new("echo", &echo.to_string())]);
    registry.set("down", vec![]);
    let mut config = Config::default();
    config.proxy_address = vec![Address::Unix(dir.path().join("proxy.sock"))];
    config.max_frame_size = MAX_FRAME;
    config.max_inflight = 64;
    config.rpc_timeout = Duration::from_secs(20);
    // No heartbeat tick during a run: the runtime only turns while an
    // input is being run, and a missed echo must not change the answers.
    config.heartbeat_interval = Duration::from_secs(3600);
    config.heartbeat_timeout = Duration::from_secs(7200);
    let proxy = rpc_proxy::start(&config, Arc::new(registry.clone()))
        .await
        .expect("the proxy starts");
    let fixture = Fixture {
        proxy,
        _registry: registry,
        _dir: dir,
    };
    // Until the endpoint's connection is up, calls may wait for it.
    let call = encode_message(MessageType::Call, b"echo:warm", 1, &[0]);
    let want = encode_message(MessageType::Reply, b"warm", 1, &[0]);
    for _ in 0..500 {
        if run(&fixture, &[], &call, 0).await == want[..] {
            return fixture;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the echo endpoint never answered through the proxy");
}

/// One client connection: `pre` handed over as read, `post` written in
/// chunks, then our side closed; everything the proxy wrote until it
/// closed.
async fn run(f: &Fixture, pre: &[u8], post: &[u8], seed: u8) -> Vec<u8> {
    let (a, b) = tokio::net::UnixStream::pair().unwrap();
    f.proxy.adopt(Stream::Unix(a), BytesMut::from(pre));
    let (mut rd, mut wr) = b.into_split();
    let writer = async {
        for chunk in chunks(post, seed) {
            if wr.write_all(chunk).await.is_err() {
                return; // closed after bad input: the rest is not read
            }
        }
        let _ = wr.shutdown().await;
    };
    let reader = async {
        let mut out = Vec::new();
        // A proxy that closes with our bytes unread resets the
        // connection: what it wrote before is still read first.
        let _ = rd.read_to_end(&mut out).await;
        out
    };
    let both = async { tokio::join!(writer, reader).1 };
    tokio::time::timeout(Duration::from_secs(10), both)
        .await
        .expect("the proxy answers and closes the connection")
}

/// What the client must get, in order.
#[derive(Debug)]
enum Want {
    Frame(Vec<u8>),
    Exception {
        name: Vec<u8>,
        seqid: i32,
        kinds: &'static [i32],
    },
    /// The last frame: a PROTOCOL_ERROR, with the offender's name and
    /// seqid where they are known (`None`: either).
    BadInput(Option<(Vec<u8>, i32)>),
}

fn expected(stream: &[u8]) -> Vec<Want> {
    let (frames, tail) = reference_frames(stream, MAX_FRAME);
    let mut want = Vec::new();
    for f in frames {
        let m = match Message::parse_or_peek(BytesMut::from(f)) {
            Ok(m) => m,
            Err((_, h)) => {
                let h = h.map_or((Vec::new(), 0), |h| (h.bare_name().to_vec(), h.seqid));
                want.push(Want::BadInput(Some(h)));
                return want;
            }
        };
        let (seqid, method) = (m.seqid(), m.method().to_vec());
        match m.kind() {
            MessageType::Call => want.push(match m.service() {
                Some(b"echo") => Want::Frame(
                    encode_message(MessageType::Reply, &method, seqid, m.body()).to_vec(),
                ),
                // Known with no endpoint, or not known: either answer.
                Some(b"down") => Want::Exception {
                    name: method,
                    seqid,
                    kinds: &[0, 6],
                },
                _ => Want::Exception {
                    name: method,
                    seqid,
                    kinds: &[0],
                },
            }),
            MessageType::Oneway => {}
            MessageType::Heartbeat => want.push(Want::Frame(heartbeat_reply(seqid).to_vec())),
            _ => want.push(Want::Exception {
                name: method,
                seqid,
                kinds: &[7],
            }),
        }
    }
    if let Tail::Bad(_) = tail {
        want.push(Want::BadInput(None));
    }
    want
}

fn exception(frame: &[u8]) -> (Vec<u8>, i32, i32) {
    let m = Message::parse(BytesMut::from(frame)).expect("an answer parses");
    assert_eq!(m.kind(), MessageType::Exception, "an exception");
    let e = read_application_exception(m.body()).expect("a TApplicationException");
    (m.name().to_vec(), m.seqid(), e.kind)
}

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let seed = c.u8();
    let handed = usize::from(c.u8() & 0x3f);
    let stream = c.rest();
    let (pre, post) = stream.split_at(handed.min(stream.len()));
    let fixture = FIXTURE.with(|f| *f);
    let out = runtime().block_on(run(fixture, pre, post, seed));

    let want = expected(stream);
    let (got, tail) = reference_frames(&out, usize::MAX);
    assert_eq!(tail, Tail::Clean, "the proxy writes whole frames");
    assert_eq!(got.len(), want.len(), "answers: {want:?}");
    for (g, w) in got.iter().zip(&want) {
        match w {
            Want::Frame(f) => assert_eq!(g, f),
            Want::Exception { name, seqid, kinds } => {
                let (n, s, k) = exception(g);
                assert_eq!((&n, s), (name, *seqid));
                assert!(
                    kinds.contains(&k),
                    "exception type {k}, want one of {kinds:?}"
                );
            }
            Want::BadInput(h) => {
                let (n, s, k) = exception(g);
                assert_eq!(k, 7, "a PROTOCOL_ERROR");
                if let Some((name, seqid)) = h {
                    assert_eq!((&n, s), (name, *seqid));
                }
            }
        }
    }
});
