//! One worker connection (SPEC §5): the worker dialled in; this task owns
//! the socket, the LB's seqid space toward it and its table of requests in
//! flight.
//!
//! Requests arrive from the dispatcher on an unbounded channel whose depth
//! the dispatcher bounds (a worker never holds more than its slots). The
//! caller's seqid is swapped for one unique on this connection and put
//! back on the reply. The task heartbeats the worker, declares it lost
//! when nothing comes back for `heartbeat_timeout` or the socket closes,
//! and honours a worker's STOP.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rpc_codec::{heartbeat, stop_confirm, FrameCodec, Message, MessageType};
use rpc_transport::{FrameReader, FrameWriter, Stream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::dispatch::{Dispatcher, Job, Outcome, WorkerId};

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub max_frame: usize,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
}

struct Pending {
    reply: oneshot::Sender<Outcome>,
    /// The caller's seqid, restored on the reply.
    seqid: i32,
}

/// Why a worker connection ended.
enum End {
    /// The LB is stopping.
    Closed,
    Lost(String),
}

pub async fn serve(
    stream: Stream,
    dispatcher: Arc<Dispatcher>,
    settings: Arc<WorkerSettings>,
    mut shutdown: watch::Receiver<bool>,
) {
    let peer = stream.peer();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let id = dispatcher.add_worker(tx);
    tracing::info!(worker = id, %peer, "worker connected");
    let mut pending = HashMap::new();
    let end = run(
        stream,
        id,
        &dispatcher,
        &settings,
        &mut rx,
        &mut pending,
        &mut shutdown,
    )
    .await;
    dispatcher.remove_worker(id);
    // Nothing more can arrive once removed: what is left was never written.
    rx.close();
    let mut unsent = Vec::new();
    while let Ok(job) = rx.try_recv() {
        unsent.push(job);
    }
    dispatcher.requeue(id, unsent);
    let cause = match end {
        End::Closed => "the LB is stopping".to_string(),
        End::Lost(cause) => {
            tracing::warn!(worker = id, %peer, %cause, "worker lost");
            cause
        }
    };
    for (_, p) in pending.drain() {
        let _ = p
            .reply
            .send(Outcome::Failed(format!("worker {peer}: {cause}")));
    }
    tracing::info!(worker = id, %peer, "worker disconnected");
}

async fn run(
    stream: Stream,
    id: WorkerId,
    dispatcher: &Dispatcher,
    s: &WorkerSettings,
    rx: &mut mpsc::UnboundedReceiver<Job>,
    pending: &mut HashMap<i32, Pending>,
    shutdown: &mut watch::Receiver<bool>,
) -> End {
    let (r, w) = stream.into_split();
    let mut reader = FrameReader::new(r, FrameCodec::new(s.max_frame));
    let mut writer = FrameWriter::new(w);
    let mut next_seqid: i32 = 0;
    let mut last_heard = Instant::now();
    let mut ticker =
        tokio::time::interval_at(Instant::now() + s.heartbeat_interval, s.heartbeat_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping = false;

    loop {
        tokio::select! {
            job = rx.recv(), if !stopping => {
                let Some(job) = job else { return End::Closed };
                let mut job = Some(job);
                // Done without a reply to wait for: oneways once written,
                // jobs whose caller gave up before they left.
                let mut released = 0;
                let now = Instant::now();
                while let Some(Job { mut msg, reply, deadline }) = job.take() {
                    match reply {
                        Some(reply) if reply.is_closed() || now >= deadline => {
                            let _ = reply.send(Outcome::Expired);
                            released += 1;
                        }
                        Some(reply) => {
                            loop {
                                next_seqid = next_seqid.wrapping_add(1);
                                if !pending.contains_key(&next_seqid) {
                                    break;
                                }
                            }
                            let seqid = msg.seqid();
                            msg.set_seqid(next_seqid);
                            pending.insert(next_seqid, Pending { reply, seqid });
                            writer.push(msg.into_bytes());
                        }
                        None => {
                            writer.push(msg.into_bytes());
                            released += 1;
                        }
                    }
                    // Everything already handed over goes out in one write.
                    job = rx.try_recv().ok();
                }
                if released > 0 {
                    dispatcher.release(id, released);
                }
            }
            frame = reader.next() => {
                let frame = match frame {
                    Some(Ok(f)) => f,
                    Some(Err(e)) => return End::Lost(format!("bad frame: {e}")),
                    None => return End::Lost("connection closed".into()),
                };
                let msg = match Message::parse(frame) {
                    Ok(m) => m,
                    Err(e) => return End::Lost(format!("bad message: {e}")),
                };
                last_heard = Instant::now();
                match msg.kind() {
                    MessageType::Heartbeat => {}
                    MessageType::Reply | MessageType::Exception => {
                        match pending.remove(&msg.seqid()) {
                            Some(p) => {
                                let mut msg = msg;
                                msg.set_seqid(p.seqid);
                                // The caller may have given up: dropping is fine.
                                let _ = p.reply.send(Outcome::Reply(msg));
                                dispatcher.release(id, 1);
                            }
                            None => tracing::debug!(worker = id, seqid = msg.seqid(), "reply to unknown seqid dropped"),
                        }
                    }
                    MessageType::Stop if !stopping => {
                        stopping = true;
                        dispatcher.stop_worker(id);
                        // Jobs handed over before the STOP was seen go elsewhere.
                        let mut unsent = Vec::new();
                        while let Ok(job) = rx.try_recv() {
                            unsent.push(job);
                        }
                        tracing::info!(worker = id, inflight = pending.len(), requeued = unsent.len(), "worker stopping");
                        dispatcher.requeue(id, unsent);
                        writer.push(stop_confirm().freeze());
                    }
                    other => tracing::debug!(worker = id, ?other, "unexpected message from worker ignored"),
                }
            }
            _ = ticker.tick() => {
                if last_heard.elapsed() > s.heartbeat_timeout {
                    return End::Lost(format!("no heartbeat echo for {:?}", last_heard.elapsed()));
                }
                writer.push(heartbeat(0).freeze());
            }
            // Writing races reading: replies keep being read while the
            // worker is slow to take requests (no deadlock on full buffers).
            written = writer.write_some(), if !writer.is_empty() => {
                if let Err(e) = written {
                    return End::Lost(format!("write failed: {e}"));
                }
            }
            _ = crate::until(shutdown, |s| *s) => return End::Closed,
        }
    }
}
