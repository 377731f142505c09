//! Discovery through a real ZooKeeper (started by the test): endpoints come
//! and go, ZooKeeper itself goes away, and the proxy keeps routing.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rpc_codec::MessageType;
use rpc_registry::zk::ZkRegistry;
use rpc_registry::Registry;
use rpc_testkit::ZkServer;

async fn zk_registry(zk: &ZkServer, product: &str) -> Arc<dyn Registry> {
    Arc::new(
        ZkRegistry::connect(&zk.hosts(), product, Duration::from_secs(4))
            .await
            .expect("zk connect"),
    )
}

async fn wait_for_tag(addr: &rpc_transport::Address, tag: &[u8]) {
    let mut c = Client::connect(addr).await;
    let deadline = tokio::time::Instant::now() + STEP;
    let mut seqid = 0;
    loop {
        seqid += 1;
        let r = c.call("echo:tag", seqid, b"").await;
        if r.kind() == MessageType::Reply && r.body() == tag {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "endpoint {tag:?} never became routable"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn endpoints_are_discovered_shared_and_deregistered() {
    let zk = ZkServer::start();
    let (a, b) = (
        TestEndpoint::start("a").await,
        TestEndpoint::start("b").await,
    );
    let registrant = zk_registry(&zk, "test").await;
    // p2c with a short latency decay: both endpoints get calls soon.
    let (_proxy, addr) = start_proxy(
        &test_config("balance_decay_ms=20"),
        zk_registry(&zk, "test").await,
    )
    .await;

    let reg_a = registrant.register(a.endpoint("echo")).await.unwrap();
    wait_for_tag(&addr, b"a").await;

    let reg_b = registrant.register(b.endpoint("echo")).await.unwrap();
    wait_for_tag(&addr, b"b").await;
    let mut c = Client::connect(&addr).await;
    tags_until_each_over(&mut c, &[&a, &b], 10, STEP).await;

    // Deregister a while a call is in flight on it: it completes, and
    // nothing new reaches a.
    let mut slow = Client::connect(&addr).await;
    let before = a.calls.load(Ordering::SeqCst);
    // p2c may send the first ones to b (lower latency estimate): add slow
    // calls until one is in flight on a.
    let deadline = tokio::time::Instant::now() + STEP;
    let mut sent = 0;
    while a.calls.load(Ordering::SeqCst) == before {
        assert!(tokio::time::Instant::now() < deadline, "no call reached a");
        slow.send(MessageType::Call, "echo:slow", sent, b"inflight")
            .await;
        sent += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    reg_a.deregister().await;
    // The calls in flight on a complete (they take 300 ms, time enough for
    // the removal to reach the proxy); then a, idle, must get nothing new.
    for _ in 0..sent {
        let r = slow.recv().await.unwrap();
        assert_eq!((r.kind(), r.body()), (MessageType::Reply, &b"inflight"[..]));
    }
    let after = a.calls.load(Ordering::SeqCst);
    for i in 0..50 {
        assert_eq!(c.call("echo:tag", 1000 + i, b"").await.body(), b"b");
    }
    assert_eq!(
        a.calls.load(Ordering::SeqCst),
        after,
        "no new request reached the deregistered endpoint"
    );
    drop(reg_b);
}

#[tokio::test]
async fn killed_endpoint_fails_only_in_flight_and_traffic_moves_on() {
    let zk = ZkServer::start();
    let (a, b) = (
        TestEndpoint::start("a").await,
        TestEndpoint::start("b").await,
    );
    let registrant = zk_registry(&zk, "test").await;
    let _ra = registrant.register(a.endpoint("echo")).await.unwrap();
    let _rb = registrant.register(b.endpoint("echo")).await.unwrap();
    let (_proxy, addr) = start_proxy(
        &test_config("balance=round_robin"),
        zk_registry(&zk, "test").await,
    )
    .await;
    wait_for_tag(&addr, b"a").await;
    wait_for_tag(&addr, b"b").await;

    let mut hung = Client::connect(&addr).await;
    for i in 0..4 {
        hung.send(MessageType::Call, "echo:hang", i, b"").await;
    }
    eventually("hang calls spread", || {
        a.calls.load(Ordering::SeqCst) > 0 && b.calls.load(Ordering::SeqCst) > 0
    })
    .await;
    a.kill().await; // its registration stays until its session would expire
    let mut c = Client::connect(&addr).await;
    for i in 0..50 {
        let r = c.call("echo:tag", 100 + i, b"").await;
        assert_eq!(
            (r.kind(), r.body()),
            (MessageType::Reply, &b"b"[..]),
            "call {i}"
        );
    }
    // The calls in flight on a failed with an error reply.
    let r = hung.recv().await.unwrap();
    assert_eq!(r.kind(), MessageType::Exception);
}

#[tokio::test]
async fn zookeeper_outage_loses_no_request_and_recovery_sees_new_endpoints() {
    let mut zk = ZkServer::start();
    let (a, b) = (
        TestEndpoint::start("a").await,
        TestEndpoint::start("b").await,
    );
    let registrant = zk_registry(&zk, "test").await;
    let _ra = registrant.register(a.endpoint("echo")).await.unwrap();
    let (_proxy, addr) = start_proxy(&test_config(""), zk_registry(&zk, "test").await).await;
    wait_for_tag(&addr, b"a").await;

    let failures = Arc::new(AtomicUsize::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (addr, failures, calls, stop) =
            (addr.clone(), failures.clone(), calls.clone(), stop.clone());
        tokio::spawn(async move {
            let mut c = Client::connect(&addr).await;
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                if c.call("echo:echo", i, b"x").await.kind() != MessageType::Reply {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    eventually("traffic flowing", || calls.load(Ordering::SeqCst) > 20).await;
    zk.stop();
    // Longer than the proxy's 4 s session: the session expires meanwhile.
    tokio::time::sleep(Duration::from_secs(6)).await;
    zk.restart();
    let _rb = registrant.register(b.endpoint("echo")).await.unwrap();
    wait_for_tag(&addr, b"b").await;
    stop.store(true, Ordering::SeqCst);
    traffic.await.unwrap();
    assert!(calls.load(Ordering::SeqCst) > 100, "traffic kept flowing");
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "no request failed during the outage"
    );
}

#[tokio::test]
async fn products_are_isolated() {
    let zk = ZkServer::start();
    let (a, b) = (
        TestEndpoint::start("test-ep").await,
        TestEndpoint::start("online-ep").await,
    );
    let _ra = zk_registry(&zk, "test")
        .await
        .register(a.endpoint("echo"))
        .await
        .unwrap();
    let _rb = zk_registry(&zk, "online_x")
        .await
        .register(b.endpoint("echo"))
        .await
        .unwrap();
    let (_p1, test_addr) = start_proxy(&test_config(""), zk_registry(&zk, "test").await).await;
    let (_p2, online_addr) = start_proxy(
        &test_config("product=online_x"),
        zk_registry(&zk, "online_x").await,
    )
    .await;
    wait_for_tag(&test_addr, b"test-ep").await;
    wait_for_tag(&online_addr, b"online-ep").await;
    let (mut t, mut o) = (
        Client::connect(&test_addr).await,
        Client::connect(&online_addr).await,
    );
    for i in 0..20 {
        assert_eq!(t.call("echo:tag", i, b"").await.body(), b"test-ep");
        assert_eq!(o.call("echo:tag", i, b"").await.body(), b"online-ep");
    }
}
