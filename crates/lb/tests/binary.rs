//! The `rpc-lb` binary as deployed: config.ini, the local registry, a
//! worker on a Unix socket, SIGTERM.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use rpc_registry::Registry;
use rpc_transport::Address;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn version_flag_prints_the_version() {
    let out = Command::new(env!("CARGO_BIN_EXE_rpc-lb"))
        .arg("-V")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn missing_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let ini = dir.path().join("config.ini");
    std::fs::write(&ini, "front_host=127.0.0.1\nfront_port=1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rpc-lb"))
        .arg("-c")
        .arg(&ini)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("service"));
}

#[tokio::test]
async fn serves_registers_and_stops_gracefully_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (reg_dir, sock) = (dir.path().join("registry"), dir.path().join("lb.sock"));
    let port = free_port();
    let ini = dir.path().join("config.ini");
    std::fs::write(
        &ini,
        format!(
            "zk=local:{}\nproduct=test\nservice=echo\nfront_host=127.0.0.1\nfront_port={port}\n\
             back_address={}\nworker_pool_size=2\nregister_delay=0\nquiet_period=0.2\n",
            reg_dir.display(),
            sock.display()
        ),
    )
    .unwrap();
    let log = dir.path().join("lb.log");
    let child = Child(
        Command::new(env!("CARGO_BIN_EXE_rpc-lb"))
            .arg("-c")
            .arg(&ini)
            .arg("-L")
            .arg(&log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let registry = rpc_registry::local::LocalRegistry::open(&reg_dir, "test").unwrap();
    let view = registry.watch().await.unwrap();

    let back = Address::Unix(sock.clone());
    let deadline = tokio::time::Instant::now() + STEP;
    while !sock.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "LB never bound its socket"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let worker = TestWorker::connect(&back, "w", 2).await;
    let front = format!("127.0.0.1:{port}");
    eventually("registered", || {
        view.borrow()
            .get("echo")
            .is_some_and(|v| v.iter().any(|e| e.frontend == front))
    })
    .await;

    let mut c = Client::connect(&front.parse().unwrap()).await;
    assert_eq!(c.call("tag", 1, b"").await.body(), b"w");
    c.send(rpc_codec::MessageType::Call, "block", 2, b"in flight")
        .await;
    eventually("call in flight", || worker.inflight() == 1).await;

    let pid = child.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    eventually("deregistered first", || match view.borrow().get("echo") {
        None => true,
        Some(v) => v.is_empty(),
    })
    .await;
    worker.release(1);
    assert_eq!(c.recv().await.unwrap().body(), b"in flight");
    let mut child = child;
    let deadline = std::time::Instant::now() + STEP;
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "LB did not exit");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(status.success(), "{status:?}");
}
