//! The LB's status page, scraped over real HTTP while real workers and a
//! raw proxy connection use the LB.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use rpc_codec::MessageType;
use rpc_testkit::http_get;
use serde_json::Value;

/// `/status`, parsed (so it must be valid JSON).
async fn status(addr: SocketAddr) -> Value {
    serde_json::from_str(&http_get(addr, "/status").await).expect("/status is JSON")
}

/// Scrapes `path` until `cond` holds for the body; fails after [`STEP`].
async fn scrape_until(addr: SocketAddr, path: &str, cond: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let body = http_get(addr, path).await;
        if cond(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} never got there:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `/status` once `cond` holds for it.
async fn status_until(addr: SocketAddr, cond: impl Fn(&Value) -> bool) -> Value {
    let text = scrape_until(addr, "/status", |s| {
        serde_json::from_str(s).is_ok_and(|v: Value| cond(&v))
    })
    .await;
    serde_json::from_str(&text).unwrap()
}

fn assert_lines(text: &str, lines: &[&str]) {
    for line in lines {
        assert!(
            text.lines().any(|l| l == *line),
            "{line} missing from:\n{text}"
        );
    }
}

fn ids(v: &Value) -> Vec<u64> {
    let workers = v["workers"].as_array().expect("workers listed");
    workers.iter().map(|w| w["id"].as_u64().unwrap()).collect()
}

#[tokio::test]
async fn calls_are_counted_and_workers_come_and_go() {
    let (lb, _reg) = start_lb("metrics_address=127.0.0.1:0\nworker_pool_size=2").await;
    let addr = lb.metrics_address().expect("metrics enabled");
    let mut w = workers(&lb, &["a", "b"], 2).await;
    let mut c = Client::connect(lb.front_address()).await;
    const N: i32 = 20;
    for i in 0..N {
        assert_eq!(c.call("echo", i, b"x").await.kind(), MessageType::Reply);
    }
    // The worker's own exception is an answered call.
    assert_eq!(c.call("nope", N, b"").await.kind(), MessageType::Exception);

    let text = scrape_until(addr, "/metrics", |t| t.contains("rpc_lb_registered 1")).await;
    assert_lines(
        &text,
        &[
            "rpc_lb_requests_total{outcome=\"ok\"} 20",
            "rpc_lb_requests_total{outcome=\"exception\"} 1",
            "rpc_lb_requests_total{outcome=\"rejected_queue_full\"} 0",
            "rpc_lb_request_duration_seconds_count 21",
            "rpc_lb_request_duration_seconds_bucket{le=\"+Inf\"} 21",
            "rpc_lb_workers 2",
            "rpc_lb_worker_connections_total 2",
            "rpc_lb_queue_length 0",
            "rpc_lb_queue_limit 10000",
            "rpc_lb_proxy_connections 1",
        ],
    );
    assert_eq!(text.matches("rpc_lb_worker_capacity{").count(), 2, "{text}");

    let v = status(addr).await;
    assert_eq!(
        (v["service"].as_str(), v["registered"].as_bool()),
        (Some("echo"), Some(true))
    );
    assert_eq!(v["requests"]["ok"], 20);
    assert_eq!(ids(&v), [1, 2]);
    let mut served = 0;
    for worker in v["workers"].as_array().unwrap() {
        assert_eq!(worker["state"], "serving");
        assert_eq!(worker["capacity"], 2);
        assert_eq!(worker["inflight"], 0);
        served += worker["served"].as_u64().unwrap();
    }
    assert_eq!(served, 21);
    assert_eq!(served as usize, w[0].calls() + w[1].calls());

    // A worker goes away: its row disappears, what it served stays counted.
    w.pop().unwrap().kill();
    let v = status_until(addr, |v| ids(v) == [1]).await;
    assert_eq!(v["latency"]["count"], 21);
    let text = http_get(addr, "/metrics").await;
    assert_lines(
        &text,
        &[
            "rpc_lb_workers 1",
            "rpc_lb_request_duration_seconds_count 21",
        ],
    );

    // A new one arrives; a stopping one is shown as such.
    let _c = TestWorker::connect(lb.back_address(), "c", 2).await;
    status_until(addr, |v| ids(v) == [1, 3]).await;
    w[0].send_stop();
    let v = status_until(addr, |v| v["workers"][0]["state"] == "stopping").await;
    assert_eq!(v["workers"][1]["state"], "serving");
    let text = http_get(addr, "/metrics").await;
    assert_lines(
        &text,
        &["rpc_lb_workers 1", "rpc_lb_worker_connections_total 3"],
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("rpc_lb_worker_up{worker=\"1\",") && l.ends_with("} 0")),
        "{text}"
    );
    let page = http_get(addr, "/").await;
    assert!(
        page.contains("<h1>rpc-lb</h1>") && page.contains("class=stopping"),
        "{page}"
    );
    assert!(
        page.contains("rpc-lb ") && page.contains("worker_pool_size = 2"),
        "{page}"
    );

    // The status page's rates: between this look and one after more calls.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    for i in 100..110 {
        assert_eq!(c.call("echo", i, b"x").await.kind(), MessageType::Reply);
    }
    let v = status(addr).await;
    assert_eq!(v["about"]["program"], "rpc-lb");
    assert_eq!(v["about"]["settings"]["worker_pool_size"], "2");
    let t = &v["traffic"][0];
    assert!(t["requests_per_s"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(t["errors_per_s"].as_f64(), Some(0.0), "{v}");
}

#[tokio::test]
async fn every_way_a_request_ends_is_counted() {
    let (lb, _reg) =
        start_lb("metrics_address=127.0.0.1:0\nworker_pool_size=1\nqueue_size=1\nrpc_timeout=0.3")
            .await;
    let addr = lb.metrics_address().expect("metrics enabled");
    let w = workers(&lb, &["a"], 1).await;
    let mut c = Client::connect(lb.front_address()).await;
    // One in flight at the only slot, one waiting, one turned away.
    c.send(MessageType::Call, "block", 1, b"held").await;
    c.send(MessageType::Call, "echo", 2, b"queued").await;
    eventually("one request queued", || lb.stats().queued == 1).await;
    c.send(MessageType::Call, "echo", 3, b"turned away").await;
    assert_eq!(c.recv().await.unwrap().seqid(), 3);
    let text = http_get(addr, "/metrics").await;
    assert_lines(
        &text,
        &[
            "rpc_lb_requests_total{outcome=\"rejected_queue_full\"} 1",
            "rpc_lb_queue_length 1",
            "rpc_lb_queue_limit 1",
        ],
    );
    // Past the deadline: one timed out at the worker, one in the queue.
    let r = c.recv_n(2).await;
    assert!(r.values().all(|m| m.kind() == MessageType::Exception));
    let v = status(addr).await;
    assert_eq!(v["requests"]["timeout"], 1);
    assert_eq!(v["requests"]["timeout_in_queue"], 1);
    assert_eq!(v["queue"]["length"], 0);
    // The timed-out call still holds the worker's slot until it answers.
    assert_eq!(v["workers"][0]["inflight"], 1);

    c.send(MessageType::Oneway, "echo", 4, b"one way").await;
    // A worker lost with a call in flight.
    w.into_iter().next().unwrap().kill();
    let b = TestWorker::connect(lb.back_address(), "b", 1).await;
    // The oneway, queued behind the stuck slot, leaves with the new worker.
    eventually("oneway delivered", || {
        !b.state.oneways.lock().unwrap().is_empty()
    })
    .await;
    c.send(MessageType::Call, "block", 5, b"lost").await;
    eventually("call at the new worker", || b.inflight() == 1).await;
    b.kill();
    assert_eq!(c.recv().await.unwrap().seqid(), 5);
    let v = status(addr).await;
    let expected = serde_json::json!({
        "ok": 0, "exception": 0, "timeout_in_queue": 1, "timeout": 1,
        "rejected_queue_full": 1, "worker_lost": 1, "oneway": 1,
    });
    assert_eq!(v["requests"], expected);
}

#[tokio::test]
async fn heartbeats_sent_and_missed_are_counted() {
    let (lb, _reg) = start_lb(
        "metrics_address=127.0.0.1:0\nheartbeat_interval_ms=50\nheartbeat_timeout_ms=60000",
    )
    .await;
    let addr = lb.metrics_address().expect("metrics enabled");
    let w = workers(&lb, &["a"], 1).await;
    let v = status_until(addr, |v| v["heartbeats"]["sent"].as_u64() >= Some(3)).await;
    assert_eq!(v["workers"][0]["heartbeats_sent"], v["heartbeats"]["sent"]);
    // A stalled worker: the intervals without a word from it are counted.
    w[0].state
        .silent
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let v = status_until(addr, |v| {
        v["workers"][0]["heartbeats_missed"].as_u64() >= Some(2)
    })
    .await;
    assert!(v["heartbeats"]["missed"].as_u64() >= Some(2), "{v}");
    let text = http_get(addr, "/metrics").await;
    assert!(text.contains("rpc_lb_heartbeats_missed_total "), "{text}");
}
