//! `rpcctl dashboard`: the fleet page and its JSON API, served by the
//! binary over the embedded registry.

// This test uses only a part of the helpers.
#[allow(dead_code)]
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::endpoint;
use rpc_registry::local::LocalRegistry;
use rpc_registry::Registry;
use rpc_testkit::{free_port, http_get};
use serde_json::Value;

#[tokio::test]
async fn serves_the_registry_as_a_page_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let reg = LocalRegistry::open(dir.path(), "test").unwrap();
    let _r = reg.register(endpoint("echo", "127.0.0.1:1")).await.unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rpcctl"))
        .args(["--zk", &format!("local:{}", dir.path().display())])
        .args([
            "dashboard",
            "--listen",
            &addr.to_string(),
            "--refresh-ms",
            "200",
        ])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    let fleet: Value = loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            let doc: Value = serde_json::from_str(&http_get(addr, "/api/fleet").await).unwrap();
            if doc["products"].as_array().is_some_and(|p| !p.is_empty()) {
                break doc;
            }
        }
        assert!(
            Instant::now() < until,
            "the dashboard never listed the registry"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let service = &fleet["products"][0]["services"][0];
    assert_eq!(fleet["products"][0]["product"], "test");
    assert_eq!(service["service"], "echo");
    assert_eq!(service["endpoints"][0]["frontend"], "127.0.0.1:1");
    assert!(http_get(addr, "/").await.contains("<html"));
    child.kill().unwrap();
    child.wait().unwrap();
}
