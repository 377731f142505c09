//! A Rust service accepting TLS only (mutual authentication).

mod common;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rpc_codec::MessageType;
use rpc_sdk::{Service, ServiceHandle};
use rpc_testkit::logs::Logs;
use rpc_testkit::tls::TestCa;
use rpc_transport::tls::{TlsClient, TlsFiles};
use rpc_transport::Stream;

async fn start(tls: TlsFiles) -> (ServiceHandle, MemRegistry) {
    let registry = MemRegistry::new();
    let mut config = service_config("service=svc\nquiet_period=0\n");
    config.tls = tls;
    let handle = Service::new(config, test_handler(Arc::new(AtomicUsize::new(0))))
        .with_registry(Arc::new(registry.clone()))
        .start()
        .await
        .expect("service starts");
    (handle, registry)
}

#[tokio::test]
async fn a_tls_service_registers_tls_and_serves_a_client_with_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "fleet");
    let (svc, reg) = start(ca.server("svc")).await;
    assert!(svc.is_tls());
    let eps = reg.endpoints("svc");
    assert_eq!(eps.len(), 1);
    assert!(eps[0].tls, "registered with \"tls\": true");

    let client = TlsClient::new(&ca.client("proxy")).unwrap();
    let mut peer = Peer::new(client.connect(svc.address()).await.unwrap());
    peer.send_frame(rpc_codec::heartbeat(7)).await;
    let echo = peer.recv().await.expect("heartbeat echoed");
    assert_eq!((echo.kind(), echo.seqid()), (MessageType::Heartbeat, 7));
    let r = peer.call("echo", 1, b"over tls").await;
    assert_eq!((r.kind(), r.body()), (MessageType::Reply, &b"over tls"[..]));
    svc.stop().await;
}

#[tokio::test]
async fn a_client_of_another_ca_is_refused_with_a_log_line_naming_it() {
    let (logs, _guard) = Logs::capture();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "fleet");
    let other = TestCa::new(dir.path(), "other");
    let (svc, _reg) = start(ca.server("svc")).await;

    let files = other.client_trusting("intruder", &ca);
    let client = TlsClient::new(&files).unwrap();
    let local = match client.connect(svc.address()).await {
        Ok(s) => {
            let (local, _) = s.tcp_addrs().unwrap();
            let mut peer = Peer::new(s);
            peer.send_frame(rpc_codec::heartbeat(1)).await;
            assert!(peer.recv().await.is_none(), "no echo for a foreign client");
            Some(local)
        }
        Err(_) => None,
    };
    let deadline = tokio::time::Instant::now() + STEP;
    let line = loop {
        if let Some(line) = logs.line_with("TLS handshake with") {
            break line;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no log line: {}",
            logs.text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        line.contains("WARN") && line.contains("connection closed"),
        "{line}"
    );
    if let Some(local) = local {
        assert!(line.contains(&local.to_string()), "names the peer: {line}");
    }
    svc.stop().await;
}

#[tokio::test]
async fn a_plain_client_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "fleet");
    let (svc, _reg) = start(ca.server("svc")).await;
    let mut peer = Peer::new(Stream::connect(svc.address()).await.unwrap());
    peer.send_frame(rpc_codec::heartbeat(1)).await;
    let answer = tokio::time::timeout(STEP, peer.recv())
        .await
        .expect("closed in time");
    assert!(answer.is_none(), "a plain frame got an answer");
    svc.stop().await;
}

#[tokio::test]
async fn a_service_with_a_bad_key_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "fleet");
    let mut files = ca.server("svc");
    let (_, other_key) = ca.issue("other", &["127.0.0.1"]);
    files.key = Some(other_key);
    let mut config = service_config("service=svc\n");
    config.tls = files;
    let e = Service::new(config, test_handler(Arc::new(AtomicUsize::new(0))))
        .with_registry(Arc::new(MemRegistry::new()))
        .start()
        .await
        .err()
        .expect("refused");
    let e = format!("{e:#}");
    assert!(
        e.contains("tls_key_file") && e.contains("does not match"),
        "{e}"
    );
}
