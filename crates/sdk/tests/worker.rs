//! The worker against a raw LB written here from SPEC §5.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use rpc_codec::MessageType;
use rpc_sdk::{handler_fn, Worker, WorkerHandle};
use rpc_transport::{Address, Listener};

/// The LB side: a listener the worker dials.
async fn lb() -> (Listener, Address) {
    let l = Listener::bind(&"127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let a = l.local_address();
    (l, a)
}

async fn accept(l: &Listener) -> Peer {
    Peer::new(
        tokio::time::timeout(STEP, l.accept())
            .await
            .expect("worker dials in")
            .unwrap(),
    )
}

/// The SPEC §5 stop handshake, LB side.
async fn stop_with_confirm(w: WorkerHandle, c: &mut Peer) {
    let stopping = tokio::spawn(w.stop());
    assert_eq!(c.recv().await.expect("STOP").kind(), MessageType::Stop);
    c.send_frame(rpc_codec::stop_confirm()).await;
    assert!(c.recv_frame().await.is_none(), "worker closes once idle");
    tokio::time::timeout(STEP, stopping)
        .await
        .expect("stop ends")
        .unwrap();
}

fn fast(w: Worker) -> Worker {
    w.backoff(Duration::from_millis(50), Duration::from_millis(200))
}

async fn start(addr: &Address, pool: usize) -> WorkerHandle {
    fast(Worker::new(
        addr.clone(),
        pool,
        test_handler(Default::default()),
    ))
    .start()
    .await
}

#[tokio::test]
async fn serves_calls_and_echoes_heartbeats() {
    let (l, addr) = lb().await;
    let w = start(&addr, 2).await;
    let mut c = accept(&l).await;
    let hb = rpc_codec::heartbeat(3);
    c.send_frame(hb.clone()).await;
    assert_eq!(c.recv_frame().await.unwrap(), hb);
    let r = c.call("echo", 11, b"body").await;
    assert_eq!(
        (r.kind(), r.seqid(), r.body()),
        (MessageType::Reply, 11, &b"body"[..])
    );
    let r = c.call("bad", 12, b"").await;
    assert_eq!(exception_of(&r).1, "bad input");
    // Replies come back in any order.
    c.send(MessageType::Call, "slow", 1, b"a").await;
    c.send(MessageType::Call, "echo", 2, b"b").await;
    assert_eq!(c.recv().await.unwrap().seqid(), 2);
    assert_eq!(c.recv().await.unwrap().seqid(), 1);
    drop(c);
    drop(l);
    w.stop().await;
}

#[tokio::test]
async fn at_most_pool_size_requests_run_at_once() {
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (r, p) = (running.clone(), peak.clone());
    let handler = handler_fn(move |_m: String, body: Bytes| {
        let (r, p) = (r.clone(), p.clone());
        async move {
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
            r.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, String>(body)
        }
    });
    let (l, addr) = lb().await;
    let w = fast(Worker::new(addr, 3, handler)).start().await;
    let mut c = accept(&l).await;
    for i in 0..12 {
        c.send(MessageType::Call, "work", i, b"").await;
    }
    let mut got = Vec::new();
    for _ in 0..12 {
        got.push(c.recv().await.unwrap().seqid());
    }
    got.sort();
    assert_eq!(got, (0..12).collect::<Vec<_>>());
    assert_eq!(
        peak.load(Ordering::SeqCst),
        3,
        "pool size is the concurrency"
    );
    stop_with_confirm(w, &mut c).await;
}

#[tokio::test]
async fn stop_sends_stop_and_finishes_in_flight_work() {
    let (l, addr) = lb().await;
    let w = start(&addr, 4).await;
    let mut c = accept(&l).await;
    c.send(MessageType::Call, "sleep", 21, b"300").await;
    // Make sure the call is being served before stopping.
    assert_eq!(c.call("echo", 20, b"").await.seqid(), 20);
    let stopping = tokio::spawn(w.stop());
    let m = c.recv().await.expect("STOP");
    assert_eq!((m.kind(), m.seqid()), (MessageType::Stop, 0));
    // A request the LB sent before it saw STOP is still served.
    c.send(MessageType::Call, "echo", 22, b"late").await;
    c.send_frame(rpc_codec::stop_confirm()).await;
    let mut seen = vec![
        c.recv().await.unwrap().seqid(),
        c.recv().await.unwrap().seqid(),
    ];
    seen.sort();
    assert_eq!(seen, vec![21, 22]);
    assert!(c.recv_frame().await.is_none(), "worker closes once idle");
    tokio::time::timeout(STEP, stopping)
        .await
        .expect("stop ends")
        .unwrap();
}

#[tokio::test]
async fn without_confirm_stop_is_bounded_by_stop_timeout() {
    let (l, addr) = lb().await;
    let w = fast(Worker::new(addr, 1, test_handler(Default::default())))
        .stop_timeout(Duration::from_millis(300))
        .start()
        .await;
    let mut c = accept(&l).await;
    let stopping = tokio::spawn(w.stop());
    assert_eq!(c.recv().await.unwrap().kind(), MessageType::Stop);
    assert!(
        c.recv_frame().await.is_none(),
        "closes after the stop timeout"
    );
    tokio::time::timeout(STEP, stopping).await.unwrap().unwrap();
}

#[tokio::test]
async fn redials_after_the_lb_restarts() {
    let (l, addr) = lb().await;
    let w = start(&addr, 1).await;
    let c = accept(&l).await;
    // The LB dies: listener and connection go.
    drop(c);
    drop(l);
    eventually("the worker saw the LB go", || !w.is_connected()).await;
    let l = Listener::bind(&addr).await.expect("same port again");
    let mut c = accept(&l).await;
    assert_eq!(c.call("echo", 1, b"back").await.body(), b"back");
    stop_with_confirm(w, &mut c).await;
}

#[tokio::test]
async fn a_silent_lb_counts_as_lost() {
    let (l, addr) = lb().await;
    let w = fast(Worker::new(addr, 1, test_handler(Default::default())))
        .heartbeat_timeout(Duration::from_millis(300))
        .start()
        .await;
    let mut first = accept(&l).await;
    // Say nothing: the worker gives up on this connection and dials again.
    let mut second = accept(&l).await;
    assert!(
        first.recv_frame().await.is_none(),
        "first connection closed"
    );
    // Heartbeats keep the new one alive past the timeout.
    for i in 0..6 {
        let hb = rpc_codec::heartbeat(i);
        second.send_frame(hb.clone()).await;
        assert_eq!(second.recv_frame().await.unwrap(), hb);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(second.call("echo", 9, b"alive").await.body(), b"alive");
    stop_with_confirm(w, &mut second).await;
}

#[tokio::test]
async fn redials_when_the_lb_is_not_up_yet() {
    let (l, addr) = lb().await;
    drop(l);
    let mut w = start(&addr, 1).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!w.is_connected());
    let l = Listener::bind(&addr).await.unwrap();
    let mut c = accept(&l).await;
    assert!(w.wait_connected(STEP).await);
    assert_eq!(c.call("echo", 1, b"x").await.body(), b"x");
    stop_with_confirm(w, &mut c).await;
}

#[tokio::test]
async fn a_lost_connection_is_redialled_at_once_but_not_twice_within_the_backoff() {
    let backoff = Duration::from_secs(2);
    let (l, addr) = lb().await;
    let w = Worker::new(addr, 1, test_handler(Default::default()))
        .backoff(backoff, 2 * backoff)
        .start()
        .await;
    // Closed by the LB (one that handed over to a successor listening on
    // the same address): redialled at once.
    let first = accept(&l).await;
    drop(first);
    let closed = tokio::time::Instant::now();
    let second = accept(&l).await;
    let redial = closed.elapsed();
    assert!(
        redial < backoff / 2,
        "redialled at once, not after {redial:?}"
    );
    // Closed again at once: an LB that accepts and closes is not spun on.
    drop(second);
    let closed = tokio::time::Instant::now();
    let mut third = accept(&l).await;
    let redial = closed.elapsed();
    assert!(
        redial >= backoff - Duration::from_millis(100),
        "backed off only {redial:?}"
    );
    assert_eq!(third.call("echo", 1, b"x").await.body(), b"x");
    stop_with_confirm(w, &mut third).await;
}
