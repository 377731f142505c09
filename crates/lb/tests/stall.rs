//! A worker process stopped with SIGSTOP (socket open, nothing answers):
//! the LB gives it no new calls from its first missed heartbeat (the
//! queue goes to the others), fails its calls in flight
//! `heartbeat_timeout` after its last frame, and takes it back once it
//! runs again (SIGCONT: it sees the closed connection and redials).

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use futures::{SinkExt, StreamExt};
use rpc_codec::{encode_message, Message, MessageType};
use serde_json::Value;

const INTERVAL: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_millis(600);

struct Worker(Child);

impl Worker {
    fn start(back: &rpc_transport::Address) -> Worker {
        let child = Command::new(bench_server())
            .arg("--worker")
            .arg(back.to_string())
            .args(["--pool-size", "4"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("a worker starts");
        Worker(child)
    }

    fn signal(&self, sig: libc::c_int) {
        assert_eq!(unsafe { libc::kill(self.0.id() as i32, sig) }, 0);
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Per worker pid: calls served, and the worker's state on the status page.
async fn workers(page: std::net::SocketAddr) -> HashMap<u32, (u64, String)> {
    let s: Value = serde_json::from_str(&rpc_testkit::http_get(page, "/status").await).unwrap();
    s["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| {
            let pid = w["pid"].as_u64()? as u32;
            let state = w["state"].as_str().unwrap_or("").to_string();
            Some((pid, (w["served"].as_u64().unwrap_or(0), state)))
        })
        .collect()
}

/// `n` sleep calls of `ms` pipelined on `c`: how many were answered.
async fn calls(c: &mut Client, first: i32, n: i32, ms: i32) -> (usize, Vec<String>) {
    for seqid in first..first + n {
        let body = sleep_args(&seqid.to_be_bytes(), ms);
        let frame = encode_message(MessageType::Call, b"sleep", seqid, &body);
        c.io.send(frame.freeze()).await.unwrap();
    }
    let (mut ok, mut failed) = (0, Vec::new());
    for _ in 0..n {
        let frame = tokio::time::timeout(STEP, c.io.next())
            .await
            .expect("an answer")
            .unwrap()
            .unwrap();
        let m = Message::parse(frame).unwrap();
        match reply_data(&m) {
            Some(d) if d == m.seqid().to_be_bytes() => ok += 1,
            _ => failed.push(exception_text(&m).1),
        }
    }
    (ok, failed)
}

#[tokio::test]
async fn a_stopped_worker_is_shunned_failed_on_time_and_rejoins_on_sigcont() {
    // A Unix back address: the LB learns each worker's pid (SO_PEERCRED).
    let dir = tempfile::tempdir().unwrap();
    let (lb, _reg) = start_lb(&format!(
        "back_address={}\nworker_pool_size=4\nheartbeat_interval_ms={}\nheartbeat_timeout_ms={}\nrpc_timeout=20\n\
         metrics_address=127.0.0.1:0",
        dir.path().join("back.sock").display(),
        INTERVAL.as_millis(),
        TIMEOUT.as_millis()
    ))
    .await;
    let page = lb.metrics_address().expect("a status page");
    let (w1, _w2) = (
        Worker::start(lb.back_address()),
        Worker::start(lb.back_address()),
    );
    let p1 = w1.0.id();
    eventually("both workers connected", || lb.stats().workers == 2).await;
    let mut c = Client::connect(lb.front_address()).await;
    assert_eq!(calls(&mut c, 0, 8, 1).await.0, 8);

    // A long call parked on each worker (least-loaded spreads them), on a
    // connection of its own; then w1 stops.
    let mut parked = Client::connect(lb.front_address()).await;
    for seqid in [100i32, 101] {
        let body = sleep_args(&seqid.to_be_bytes(), 3000);
        let frame = encode_message(MessageType::Call, b"sleep", seqid, &body);
        parked.io.send(frame.freeze()).await.unwrap();
    }
    eventually("a call in each worker", || lb.stats().inflight == 2).await;
    w1.signal(libc::SIGSTOP);
    let stopped_at = Instant::now();
    // The first answer on the parked connection, and when it came.
    let first_parked = tokio::spawn(async move {
        let frame = tokio::time::timeout(STEP, parked.io.next()).await;
        let at = stopped_at.elapsed();
        let m = Message::parse(frame.expect("an answer").unwrap().unwrap()).unwrap();
        (m, at)
    });

    // From the first missed heartbeat on, calls go to w2 alone: pipelined
    // calls all answered (w1 has free slots, but none reaches it).
    let deadline = tokio::time::Instant::now() + STEP;
    let s = loop {
        let s = workers(page).await;
        if s[&p1].1 == "suspect" {
            break s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "w1 never suspect: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // Shunned from the first missed heartbeat, before the timeout drops it.
    let shunned_after = stopped_at.elapsed();
    assert!(shunned_after < TIMEOUT, "suspect after {shunned_after:?}");
    let served_w1 = s[&p1].0;
    let (ok, failed) = calls(&mut c, 1000, 40, 5).await;
    assert_eq!((ok, failed.len()), (40, 0), "{failed:?}");

    // w1's parked call fails heartbeat_timeout after its last frame
    // (before the stop); w2's would take 3 s.
    let (m, failed_after) = first_parked.await.unwrap();
    let (_, text) = exception_text(&m);
    assert_eq!(m.kind(), MessageType::Exception, "{text}");
    assert!([100, 101].contains(&m.seqid()));
    assert!(text.contains("heartbeat"), "{text}");
    assert!(
        failed_after <= TIMEOUT + INTERVAL,
        "failed {failed_after:?} after the stop (heartbeat_timeout {TIMEOUT:?})"
    );
    eventually("w1 dropped", || lb.stats().workers == 1).await;

    // SIGCONT: w1 finds its connection closed, redials and serves again.
    w1.signal(libc::SIGCONT);
    eventually("w1 back", || lb.stats().workers == 2).await;
    let deadline = tokio::time::Instant::now() + STEP;
    let mut seqid = 2000;
    loop {
        let (ok, failed) = calls(&mut c, seqid, 8, 5).await;
        assert_eq!((ok, failed.len()), (8, 0), "{failed:?}");
        seqid += 8;
        let s = workers(page).await;
        if s.get(&p1)
            .is_some_and(|(served, state)| state == "serving" && *served > 0)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "w1 serves again: {s:?} (served {served_w1} before)"
        );
    }
    lb.stop().await;
}
