//! Endpoints that stall with their socket open (a stopped process, a
//! silent link): the proxy shuns them from the first missed heartbeat,
//! fails their calls in flight `heartbeat_timeout` after their last sign
//! of life, admits a reconnected connection only once it answers, and
//! takes them back when they do.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rpc_codec::MessageType;

const INTERVAL: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_millis(400);

#[tokio::test]
async fn a_stalled_endpoint_is_shunned_at_once_failed_on_time_not_readmitted_and_rejoins() {
    let (a, b) = (
        TestEndpoint::start("a").await,
        TestEndpoint::start("b").await,
    );
    let reg = MemRegistry::new();
    reg.set("echo", vec![a.endpoint("echo"), b.endpoint("echo")]);
    let config = test_config(&format!(
        "rpc_timeout=30\nheartbeat_interval_ms={}\nheartbeat_timeout_ms={}\nbalance=round_robin",
        INTERVAL.as_millis(),
        TIMEOUT.as_millis()
    ));
    let (_proxy, addr) = start_proxy(&config, Arc::new(reg)).await;
    let mut c = Client::connect(&addr).await;
    // Both admitted (each answered a heartbeat) before the test goes on.
    let deadline = tokio::time::Instant::now() + STEP;
    let mut seen = std::collections::BTreeSet::new();
    for i in 0.. {
        seen.insert(c.call("echo:tag", i, b"").await.body().to_vec());
        if seen.len() == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "both endpoints up");
    }
    // One call parked on each endpoint (round robin alternates), on
    // connections of their own: replies come back in request order.
    let mut parked = Vec::new();
    for i in 0..2 {
        let mut p = Client::connect(&addr).await;
        p.send(MessageType::Call, "echo:hang", 100 + i, b"").await;
        parked.push(p);
    }
    eventually("both hanging calls arrived", || {
        a.calls.load(Ordering::SeqCst) + b.calls.load(Ordering::SeqCst) >= seen.len() + 2
    })
    .await;

    a.stalled.store(true, Ordering::SeqCst);
    let stalled_at = Instant::now();

    // From the first missed heartbeat on, new calls go to b alone.
    tokio::time::sleep(2 * INTERVAL + Duration::from_millis(50)).await;
    for i in 0..20 {
        let r = c.call("echo:tag", 1000 + i, b"").await;
        assert_eq!((r.kind(), r.body()), (MessageType::Reply, &b"b"[..]));
    }

    // The call parked on a fails by heartbeat_timeout after a's last sign
    // of life (which came before the stall); b's stays parked.
    let mut failed_after = None;
    for p in &mut parked {
        if let Ok(Some(r)) = tokio::time::timeout(STEP, p.recv()).await {
            assert_eq!(r.kind(), MessageType::Exception, "{r:?}");
            let (_, text) = exception_text(&r);
            assert!(text.contains("heartbeat"), "{text}");
            failed_after = Some(stalled_at.elapsed());
            break;
        }
    }
    let failed_after = failed_after.expect("the call on the stalled endpoint failed");
    assert!(
        failed_after <= TIMEOUT + INTERVAL,
        "failed {failed_after:?} after the stall (heartbeat_timeout {TIMEOUT:?})"
    );

    // The proxy reconnects; a's kernel accepts, but a never answers: no
    // call goes to the new connection (none fails), across reconnects.
    let until = Instant::now() + Duration::from_millis(2500);
    let mut i = 2000;
    while Instant::now() < until {
        let r = c.call("echo:tag", i, b"").await;
        assert_eq!(
            (r.kind(), r.body()),
            (MessageType::Reply, &b"b"[..]),
            "call {i}"
        );
        i += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // a answers again: it rejoins.
    a.stalled.store(false, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + 2 * STEP;
    loop {
        let r = c.call("echo:tag", i, b"").await;
        assert_eq!(r.kind(), MessageType::Reply);
        if r.body() == b"a" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "a never rejoined");
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An endpoint killed, then restarted on the same address: the proxy dials
/// it when it registers again, not when its reconnect backoff (grown to
/// 4 s by then) runs out.
#[tokio::test]
async fn a_restarted_endpoint_is_dialled_when_it_registers_again() {
    let a = TestEndpoint::start("a").await;
    let address = a.address.clone();
    let reg = MemRegistry::new();
    reg.set("echo", vec![a.endpoint("echo")]);
    let (_proxy, addr) = start_proxy(&test_config("rpc_timeout=1"), Arc::new(reg.clone())).await;
    let mut c = Client::connect(&addr).await;
    assert_eq!(c.call("echo:tag", 1, b"").await.body(), b"a");
    a.kill().await;
    // Lost at once, then dials fail after 1 s and 3 s: the next waits 4 s.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let again = TestEndpoint::start_on(&address, "a2").await;
    // A new record (a later start_time), as a restarted process writes.
    let mut ep = again.endpoint("echo");
    ep.start_time = "2999-01-01 00:00:00".into();
    reg.set("echo", vec![ep]);
    let registered = Instant::now();
    let mut i = 2;
    loop {
        let r = c.call("echo:tag", i, b"").await;
        if r.kind() == MessageType::Reply {
            assert_eq!(r.body(), b"a2");
            break;
        }
        assert!(
            registered.elapsed() < Duration::from_secs(2),
            "not dialled within 2 s of registering again (the backoff would take until 4 s)"
        );
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
