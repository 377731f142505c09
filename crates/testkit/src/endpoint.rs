//! A service endpoint speaking SPEC §4 with scripted methods, for the
//! proxy's tests and everything else that needs one.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use futures::StreamExt;
use rpc_codec::{encode_message, FrameCodec, Message, MessageType};
use rpc_registry::Endpoint;
use rpc_transport::{Address, Listener, Stream};

use crate::Peer as Client;

/// A service endpoint speaking SPEC §4, with methods that script behaviour:
/// `echo` answers the body, `tag` answers the endpoint's tag, `slow`
/// answers after 300 ms, `hang` never answers; every call is recorded.
/// `delay_ms` makes `echo` and `tag` answer that much later (a slow endpoint).
pub struct TestEndpoint {
    pub address: Address,
    pub tag: String,
    pub calls: Arc<AtomicUsize>,
    pub oneways: Arc<Mutex<Vec<Vec<u8>>>>,
    /// When set, the endpoint stops reading and answering (a stalled process).
    pub stalled: Arc<AtomicBool>,
    pub delay_ms: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestEndpoint {
    pub async fn start(tag: &str) -> TestEndpoint {
        Self::start_on(&"127.0.0.1:0".parse().unwrap(), tag).await
    }

    pub async fn start_on(addr: &Address, tag: &str) -> TestEndpoint {
        let listener = Listener::bind(addr).await.unwrap();
        let address = listener.local_address();
        let calls = Arc::new(AtomicUsize::new(0));
        let oneways = Arc::new(Mutex::new(Vec::new()));
        let stalled = Arc::new(AtomicBool::new(false));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (stop, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (c, o, s, d, t) = (
            calls.clone(),
            oneways.clone(),
            stalled.clone(),
            delay_ms.clone(),
            tag.to_string(),
        );
        let task = tokio::spawn(async move {
            let mut conns = Vec::new();
            loop {
                tokio::select! {
                    r = listener.accept() => {
                        let Ok(stream) = r else { continue };
                        conns.push(tokio::spawn(serve_endpoint(stream, t.clone(), c.clone(), o.clone(), s.clone(), d.clone())));
                    }
                    _ = &mut stop_rx => break,
                }
            }
            // Killed: every connection goes with it.
            for c in conns {
                c.abort();
            }
        });
        TestEndpoint {
            address,
            tag: tag.into(),
            calls,
            oneways,
            stalled,
            delay_ms,
            stop: Some(stop),
            task,
        }
    }

    pub fn endpoint(&self, service: &str) -> Endpoint {
        Endpoint::new(service, &self.address.to_string())
    }

    /// Closes the listener and every connection at once (like kill -9).
    pub async fn kill(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.task).await;
    }
}

async fn serve_endpoint(
    stream: Stream,
    tag: String,
    calls: Arc<AtomicUsize>,
    oneways: Arc<Mutex<Vec<Vec<u8>>>>,
    stalled: Arc<AtomicBool>,
    delay_ms: Arc<AtomicU64>,
) {
    let (r, w) = stream.into_split();
    let mut reader = tokio_util::codec::FramedRead::new(r, FrameCodec::default());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<BytesMut>();
    let writer = tokio::spawn(async move {
        let mut w = rpc_transport::FrameWriter::new(w);
        while let Some(f) = rx.recv().await {
            w.push(f.freeze());
            while let Ok(f) = rx.try_recv() {
                w.push(f.freeze());
            }
            if w.flush().await.is_err() {
                break;
            }
        }
    });
    while let Some(Ok(frame)) = reader.next().await {
        while stalled.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let msg = Message::parse(frame).expect("proxy sends valid messages");
        let seqid = msg.seqid();
        match msg.kind() {
            MessageType::Heartbeat => {
                let _ = tx.send(msg.into_inner());
            }
            MessageType::Oneway => oneways.lock().unwrap().push(msg.body().to_vec()),
            MessageType::Call => {
                calls.fetch_add(1, Ordering::SeqCst);
                let name = msg.name().to_vec();
                let reply = |body: &[u8]| encode_message(MessageType::Reply, &name, seqid, body);
                let answer = |r: BytesMut| match delay_ms.load(Ordering::SeqCst) {
                    0 => {
                        let _ = tx.send(r);
                    }
                    ms => {
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                            let _ = tx.send(r);
                        });
                    }
                };
                match &name[..] {
                    b"echo" => answer(reply(msg.body())),
                    b"tag" => answer(reply(tag.as_bytes())),
                    b"slow" => {
                        let (tx, r) = (tx.clone(), reply(msg.body()));
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            let _ = tx.send(r);
                        });
                    }
                    b"hang" => {}
                    _ => {
                        let e = rpc_codec::application_exception(
                            &name,
                            seqid,
                            rpc_codec::ExceptionKind::UnknownMethod,
                            "no such method",
                        );
                        let _ = tx.send(e);
                    }
                }
            }
            other => panic!("endpoint got unexpected {other:?}"),
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// Calls `echo:tag` one call at a time until each of `endpoints` has
/// answered more than `n` of them (failing after `within`); returns how
/// many each answered.
pub async fn tags_until_each_over(
    c: &mut Client,
    endpoints: &[&TestEndpoint],
    n: usize,
    within: Duration,
) -> Vec<usize> {
    let deadline = tokio::time::Instant::now() + within;
    let mut counts = vec![0; endpoints.len()];
    let mut seqid = 0;
    while counts.iter().any(|&k| k <= n) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every endpoint got over {n} calls: {counts:?}"
        );
        seqid += 1;
        let r = c.call("echo:tag", seqid, b"").await;
        let i = endpoints
            .iter()
            .position(|e| e.tag.as_bytes() == r.body())
            .unwrap_or_else(|| panic!("unexpected answer {r:?}"));
        counts[i] += 1;
    }
    counts
}
