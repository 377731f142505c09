//! Shared by the dashboard's integration tests: the dashboard started
//! in-process and its `/api/fleet` read until it shows what a test waits for.

#![allow(dead_code)] // each test file uses its own part

use std::net::SocketAddr;
use std::time::Duration;

use rpc_dashboard::Options;
use serde_json::Value;

/// Starts the dashboard on a free loopback port.
pub async fn start_dashboard(options: Options) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        rpc_dashboard::serve(listener, options)
            .await
            .expect("the dashboard serves");
    });
    (addr, task)
}

pub async fn fleet(addr: SocketAddr) -> Value {
    serde_json::from_str(&rpc_testkit::http_get(addr, "/api/fleet").await).expect("JSON")
}

/// Reads `/api/fleet` until `cond` holds, failing with `what` and the last
/// document after `limit`.
pub async fn fleet_until(
    addr: SocketAddr,
    what: &str,
    limit: Duration,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let every = Duration::from_millis(50);
    rpc_testkit::read_until(what, limit, every, || fleet(addr), cond).await
}

/// The endpoint of `product`/`service` at `frontend`, if listed.
pub fn endpoint<'a>(
    f: &'a Value,
    product: &str,
    service: &str,
    frontend: &str,
) -> Option<&'a Value> {
    f["products"]
        .as_array()?
        .iter()
        .find(|p| p["product"] == product)?["services"]
        .as_array()?
        .iter()
        .find(|s| s["service"] == service)?["endpoints"]
        .as_array()?
        .iter()
        .find(|e| e["frontend"] == frontend)
}

/// The state of that endpoint (`None` when not listed).
pub fn state(f: &Value, product: &str, service: &str, frontend: &str) -> Option<String> {
    endpoint(f, product, service, frontend).and_then(|e| e["state"].as_str().map(String::from))
}

/// The latest request rate of `service` from the status page `source`.
pub fn rate(f: &Value, source: &str, service: &str) -> Option<f64> {
    f["traffic"]
        .as_array()?
        .iter()
        .find(|t| t["source"] == source && t["service"] == service)?["samples"]
        .as_array()?
        .last()?["rate"]
        .as_f64()
}
