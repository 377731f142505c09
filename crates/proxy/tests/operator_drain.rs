//! Endpoints an operator drained (`Endpoint::draining` in the registry
//! view): out of the rotation while another endpoint of their service is
//! up, a last resort when none is, back in when undrained. The registry
//! here is in memory; `rpc-cli`'s tests drive the same through ZooKeeper
//! and `rpcctl`.

mod common;

use std::sync::Arc;

use common::*;
use rpc_codec::MessageType;
use rpc_registry::Endpoint;

fn drained(mut e: Endpoint) -> Endpoint {
    e.draining = true;
    e
}

/// Calls `echo:tag` until `tag` answers (bounded); every call must succeed.
async fn until_answered_by(c: &mut Client, seqid: &mut i32, tag: &[u8]) {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        *seqid += 1;
        let r = c.call("echo:tag", *seqid, b"").await;
        assert_eq!(r.kind(), MessageType::Reply, "{r:?}");
        if r.body() == tag {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{tag:?} never answered"
        );
    }
}

#[tokio::test]
async fn a_drained_endpoint_serves_only_while_no_other_is_up() {
    let (a, b) = (
        TestEndpoint::start("a").await,
        TestEndpoint::start("b").await,
    );
    let reg = MemRegistry::new();
    reg.set(
        "echo",
        vec![drained(a.endpoint("echo")), b.endpoint("echo")],
    );
    let config = test_config("balance=round_robin\nmetrics_address=127.0.0.1:0");
    let (proxy, addr) = start_proxy(&config, Arc::new(reg.clone())).await;
    let metrics = proxy.metrics_address().unwrap();
    let mut c = Client::connect(&addr).await;
    let mut seqid = 0;
    until_answered_by(&mut c, &mut seqid, b"b").await;
    for _ in 0..50 {
        seqid += 1;
        assert_eq!(c.call("echo:tag", seqid, b"").await.body(), b"b");
    }
    assert_eq!(a.calls.load(std::sync::atomic::Ordering::SeqCst), 0);

    // Shown on the status page and in the metrics; the connection is up.
    let status: serde_json::Value =
        serde_json::from_str(&rpc_testkit::http_get(metrics, "/status").await).unwrap();
    let row = |addr: &str| {
        status["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["endpoint"] == addr)
            .cloned()
            .unwrap()
    };
    let (ra, rb) = (row(&a.address.to_string()), row(&b.address.to_string()));
    assert_eq!(
        (&ra["draining"], &ra["state"]),
        (&true.into(), &"Up".into())
    );
    assert_eq!(rb["draining"], false);
    let text = rpc_testkit::http_get(metrics, "/metrics").await;
    let gauge = format!(
        "rpc_proxy_endpoint_draining{{service=\"echo\",endpoint=\"{}\"}} 1",
        a.address
    );
    assert!(text.contains(&gauge), "{text}");

    // b's process dies (still registered): a is the last resort.
    b.kill().await;
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        seqid += 1;
        let r = c.call("echo:tag", seqid, b"").await;
        if r.kind() == MessageType::Reply && r.body() == b"a" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "a never took over");
    }
    for _ in 0..50 {
        seqid += 1;
        let r = c.call("echo:tag", seqid, b"").await;
        assert_eq!((r.kind(), r.body()), (MessageType::Reply, &b"a"[..]));
    }

    // Undrained, with a new endpoint beside it: both in the rotation.
    let n = TestEndpoint::start("n").await;
    reg.set("echo", vec![a.endpoint("echo"), n.endpoint("echo")]);
    until_answered_by(&mut c, &mut seqid, b"n").await;
    until_answered_by(&mut c, &mut seqid, b"a").await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn every_endpoint_drained_still_serves_and_oneways_still_go() {
    let (a, b) = (
        TestEndpoint::start("a").await,
        TestEndpoint::start("b").await,
    );
    let reg = MemRegistry::new();
    reg.set(
        "echo",
        vec![drained(a.endpoint("echo")), drained(b.endpoint("echo"))],
    );
    let config = test_config("balance=round_robin");
    let (_proxy, addr) = start_proxy(&config, Arc::new(reg)).await;
    let mut c = Client::connect(&addr).await;
    let mut seqid = 0;
    until_answered_by(&mut c, &mut seqid, b"a").await;
    until_answered_by(&mut c, &mut seqid, b"b").await;
    c.send(MessageType::Oneway, "echo:note", 0, b"hi").await;
    eventually("the oneway arrives", || {
        a.oneways.lock().unwrap().len() + b.oneways.lock().unwrap().len() == 1
    })
    .await;
}
