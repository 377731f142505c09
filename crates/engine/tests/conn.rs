//! The engine on loopback sockets, with small hops written here.

use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use rpc_codec::{
    encode_message, read_application_exception, ExceptionKind, FrameCodec, Message, MessageType,
};
use rpc_engine::conn::{self, End};
use rpc_engine::{Cx, Flow, Hop, Lost, Options};
use rpc_transport::{Address, FrameReader, Listener, Stream, WriteHalf};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A connected pair: the engine's end and the test's (a reader and a
/// writer of raw bytes).
async fn pair() -> (Stream, FrameReader, WriteHalf) {
    let l = Listener::bind(&Address::Tcp("127.0.0.1:0".into()))
        .await
        .unwrap();
    let c = Stream::connect(&l.local_address()).await.unwrap();
    let s = l.accept().await.unwrap();
    let (r, w) = c.into_split();
    (s, FrameReader::new(r, FrameCodec::default()), w)
}

fn call(seqid: i32, body: &[u8]) -> Bytes {
    encode_message(MessageType::Call, b"echo", seqid, body).freeze()
}

async fn next(r: &mut FrameReader) -> Option<Message> {
    let f = tokio::time::timeout(Duration::from_secs(5), r.next())
        .await
        .expect("a frame in time")?;
    Some(Message::parse(f.unwrap()).unwrap())
}

/// Echoes calls as replies; counts batches.
#[derive(Default)]
struct Echo {
    messages: usize,
    batches: usize,
}

impl Hop for Echo {
    type Event = ();

    fn on_message(&mut self, msg: Message, cx: &mut Cx<'_>) -> Flow {
        self.messages += 1;
        let reply = encode_message(MessageType::Reply, msg.name(), msg.seqid(), msg.body());
        cx.send(reply.freeze());
        Flow::Continue
    }

    fn on_batch_end(&mut self, _cx: &mut Cx<'_>) {
        self.batches += 1;
    }
}

#[tokio::test]
async fn frames_written_together_are_handled_in_one_batch() {
    let (s, mut r, mut w) = pair().await;
    let mut all = Vec::new();
    for i in 0..100 {
        all.extend_from_slice(&call(i, b"x"));
    }
    w.write_all(&all).await.unwrap();
    w.shutdown().await.unwrap();
    let mut hop = Echo::default();
    let end = conn::run(&mut hop, s, std::future::pending(), &Options::new(1 << 20)).await;
    assert_eq!(end, End::Closed);
    for i in 0..100 {
        assert_eq!(next(&mut r).await.unwrap().seqid(), i);
    }
    assert!(next(&mut r).await.is_none(), "closed after the replies");
    assert_eq!(hop.messages, 100);
    // One read for all of it, and one for the end of the stream (rarely
    // the kernel splits the first).
    assert!(hop.batches <= 3, "{} batches", hop.batches);
}

#[tokio::test]
async fn bad_input_is_answered_with_a_protocol_error_after_what_was_owed() {
    let (s, mut r, mut w) = pair().await;
    let mut bytes = call(1, b"ok").to_vec();
    // A strict header with an unknown message type, then more calls that
    // must not be answered.
    bytes.extend_from_slice(&encode_message(MessageType::Call, b"bad", 9, b"")[..]);
    let n = bytes.len();
    bytes[n - 12] = 99;
    bytes.extend_from_slice(&call(2, b"late"));
    w.write_all(&bytes).await.unwrap();
    let mut hop = Echo::default();
    let end = conn::run(&mut hop, s, std::future::pending(), &Options::new(1 << 20)).await;
    assert_eq!(end, End::Closed);
    assert_eq!(next(&mut r).await.unwrap().seqid(), 1);
    let e = next(&mut r).await.unwrap();
    assert_eq!(
        (e.kind(), e.name(), e.seqid()),
        (MessageType::Exception, &b"bad"[..], 9)
    );
    let x = read_application_exception(e.body()).unwrap();
    assert_eq!(x.kind, ExceptionKind::ProtocolError as i32);
    assert!(next(&mut r).await.is_none());
}

#[tokio::test]
async fn an_oversized_frame_closes_the_connection() {
    let (s, mut r, mut w) = pair().await;
    w.write_all(&(4096u32).to_be_bytes()).await.unwrap();
    let mut hop = Echo::default();
    let end = conn::run(&mut hop, s, std::future::pending(), &Options::new(1024)).await;
    assert_eq!(end, End::Closed);
    let e = next(&mut r).await.unwrap();
    assert_eq!(e.kind(), MessageType::Exception);
    assert!(next(&mut r).await.is_none());
}

/// Answers calls later, from another task, through its events.
struct Deferred {
    tx: mpsc::UnboundedSender<Bytes>,
    rx: mpsc::UnboundedReceiver<Bytes>,
    owed: usize,
}

impl Hop for Deferred {
    type Event = Bytes;

    fn on_message(&mut self, msg: Message, _cx: &mut Cx<'_>) -> Flow {
        self.owed += 1;
        let tx = self.tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let r = encode_message(MessageType::Reply, msg.name(), msg.seqid(), b"");
            let _ = tx.send(r.freeze());
        });
        Flow::Continue
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        self.rx.poll_recv(cx)
    }

    fn try_event(&mut self) -> Option<Bytes> {
        self.rx.try_recv().ok()
    }

    fn on_event(&mut self, reply: Bytes, cx: &mut Cx<'_>) -> Flow {
        self.owed -= 1;
        cx.send(reply);
        Flow::Continue
    }

    fn owes(&self) -> bool {
        self.owed > 0
    }
}

#[tokio::test]
async fn shutdown_stops_reading_and_ends_once_nothing_is_owed() {
    let (s, mut r, mut w) = pair().await;
    let (tx, rx) = mpsc::unbounded_channel();
    let mut hop = Deferred { tx, rx, owed: 0 };
    w.write_all(&call(1, b"")).await.unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let engine = tokio::spawn(async move {
        let stop = async {
            let _ = stop_rx.await;
        };
        conn::run(&mut hop, s, stop, &Options::new(1 << 20)).await
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    stop_tx.send(()).unwrap();
    // Sent after the shutdown: never read.
    let _ = w.write_all(&call(2, b"")).await;
    assert_eq!(next(&mut r).await.unwrap().seqid(), 1);
    assert!(next(&mut r).await.is_none());
    assert_eq!(engine.await.unwrap(), End::Closed);
}

/// Sends a heartbeat at each tick and gives up after three silent ones.
struct Ticker {
    next: Instant,
    every: Duration,
    ticks: u32,
}

impl Hop for Ticker {
    type Event = ();

    fn on_message(&mut self, _msg: Message, _cx: &mut Cx<'_>) -> Flow {
        Flow::Continue
    }

    fn deadline(&self) -> Option<Instant> {
        Some(self.next)
    }

    fn on_timer(&mut self, cx: &mut Cx<'_>) -> Flow {
        self.ticks += 1;
        if self.ticks == 3 {
            return Flow::End(Lost::Silent(self.every * 3));
        }
        self.next = cx.now() + self.every;
        cx.send(rpc_codec::heartbeat(self.ticks as i32).freeze());
        Flow::Continue
    }
}

#[tokio::test(start_paused = true)]
async fn the_hop_timer_follows_its_deadline() {
    let (s, mut r, _w) = pair().await;
    let every = Duration::from_secs(1);
    let started = Instant::now();
    let mut hop = Ticker {
        next: started + every,
        every,
        ticks: 0,
    };
    let end = conn::run(&mut hop, s, std::future::pending(), &Options::new(1024)).await;
    assert_eq!(end, End::Lost(Lost::Silent(every * 3)));
    assert_eq!(started.elapsed(), every * 3);
    for seqid in 1..=2 {
        let m = next(&mut r).await.unwrap();
        assert_eq!((m.kind(), m.seqid()), (MessageType::Heartbeat, seqid));
    }
}
