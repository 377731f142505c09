//! A worker written from SPEC §5 alone, for the LB's tests.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use futures::StreamExt;
use rpc_codec::{encode_message, FrameCodec, Message, MessageType};
use rpc_transport::{Address, Stream};
use tokio::sync::{mpsc, Semaphore};

/// What a worker saw and did, for assertions.
pub struct WorkerState {
    /// Calls received.
    pub calls: AtomicUsize,
    /// Calls received and not yet answered.
    pub inflight: AtomicUsize,
    /// Highest `inflight` ever seen.
    pub max_inflight: AtomicUsize,
    pub heartbeats: AtomicUsize,
    /// Bodies of the calls received, in arrival order.
    pub bodies: Mutex<Vec<Vec<u8>>>,
    pub oneways: Mutex<Vec<Vec<u8>>>,
    /// When set the worker stops echoing heartbeats (a stalled process).
    pub silent: AtomicBool,
    pub stop_confirmed: AtomicBool,
    /// `block` calls wait for a permit here.
    pub gate: Semaphore,
    /// The LB closed the connection.
    pub closed: AtomicBool,
}

/// A worker process as SPEC §5 describes it: dials the LB, keeps one
/// connection, serves up to `pool_size` calls at once (more wait for a
/// pool slot), echoes heartbeats, answers each call with its seqid.
///
/// Methods: `echo` answers the body, `tag` the worker's tag, `slow` the
/// body after 100 ms, `block` the body once the test opens the gate;
/// anything else gets an UNKNOWN_METHOD exception.
pub struct TestWorker {
    pub tag: String,
    pub state: Arc<WorkerState>,
    out: mpsc::UnboundedSender<BytesMut>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl TestWorker {
    pub async fn connect(lb_back: &Address, tag: &str, pool_size: usize) -> TestWorker {
        let stream = Stream::connect(lb_back).await.expect("worker dials the LB");
        let (r, w) = stream.into_split();
        let state = Arc::new(WorkerState {
            calls: AtomicUsize::new(0),
            inflight: AtomicUsize::new(0),
            max_inflight: AtomicUsize::new(0),
            heartbeats: AtomicUsize::new(0),
            bodies: Mutex::new(Vec::new()),
            oneways: Mutex::new(Vec::new()),
            silent: AtomicBool::new(false),
            stop_confirmed: AtomicBool::new(false),
            gate: Semaphore::new(0),
            closed: AtomicBool::new(false),
        });
        let (out, mut out_rx) = mpsc::unbounded_channel::<BytesMut>();
        let writer = tokio::spawn(async move {
            let mut w = rpc_transport::FrameWriter::new(w);
            while let Some(f) = out_rx.recv().await {
                w.push(f.freeze());
                while let Ok(f) = out_rx.try_recv() {
                    w.push(f.freeze());
                }
                if w.flush().await.is_err() {
                    break;
                }
            }
        });
        let pool = Arc::new(Semaphore::new(pool_size));
        let (st, tx, t) = (state.clone(), out.clone(), tag.to_string());
        let reader = tokio::spawn(async move {
            let mut reader = tokio_util::codec::FramedRead::new(r, FrameCodec::default());
            let mut calls = Vec::new();
            while let Some(Ok(frame)) = reader.next().await {
                let msg = Message::parse(frame).expect("the LB sends valid messages");
                match msg.kind() {
                    MessageType::Heartbeat => {
                        st.heartbeats.fetch_add(1, Ordering::SeqCst);
                        if !st.silent.load(Ordering::SeqCst) {
                            let _ = tx.send(msg.into_inner());
                        }
                    }
                    MessageType::StopConfirm => st.stop_confirmed.store(true, Ordering::SeqCst),
                    MessageType::Oneway => st.oneways.lock().unwrap().push(msg.body().to_vec()),
                    MessageType::Call => {
                        st.calls.fetch_add(1, Ordering::SeqCst);
                        let now = st.inflight.fetch_add(1, Ordering::SeqCst) + 1;
                        st.max_inflight.fetch_max(now, Ordering::SeqCst);
                        st.bodies.lock().unwrap().push(msg.body().to_vec());
                        let (st, tx, tag, pool) = (st.clone(), tx.clone(), t.clone(), pool.clone());
                        calls.push(tokio::spawn(async move {
                            let _slot = pool.acquire().await.unwrap();
                            let reply = answer(&msg, &tag, &st).await;
                            st.inflight.fetch_sub(1, Ordering::SeqCst);
                            let _ = tx.send(reply);
                        }));
                    }
                    other => panic!("worker got unexpected {other:?}"),
                }
            }
            st.closed.store(true, Ordering::SeqCst);
            for c in calls {
                c.abort();
            }
        });
        TestWorker {
            tag: tag.into(),
            state,
            out,
            tasks: vec![reader, writer],
        }
    }

    /// Graceful stop, step one: tell the LB (SPEC §5).
    pub fn send_stop(&self) {
        let _ = self.out.send(rpc_codec::stop());
    }

    /// Lets `n` blocked calls answer.
    pub fn release(&self, n: usize) {
        self.state.gate.add_permits(n);
    }

    pub fn inflight(&self) -> usize {
        self.state.inflight.load(Ordering::SeqCst)
    }

    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    pub fn saw_body(&self, body: &[u8]) -> bool {
        self.state.bodies.lock().unwrap().iter().any(|b| b == body)
    }

    /// The process dies: socket closed, nothing answered.
    pub fn kill(self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn answer(msg: &Message, tag: &str, st: &WorkerState) -> BytesMut {
    let reply = |body: &[u8]| encode_message(MessageType::Reply, msg.name(), msg.seqid(), body);
    match msg.name() {
        b"echo" => reply(msg.body()),
        b"tag" => reply(tag.as_bytes()),
        b"slow" => {
            tokio::time::sleep(Duration::from_millis(100)).await;
            reply(msg.body())
        }
        b"block" => {
            st.gate.acquire().await.unwrap().forget();
            reply(msg.body())
        }
        _ => rpc_codec::application_exception(
            msg.name(),
            msg.seqid(),
            rpc_codec::ExceptionKind::UnknownMethod,
            "no such method",
        ),
    }
}
