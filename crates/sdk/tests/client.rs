//! The proxy clients against raw servers and SDK services on loopback.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rpc_codec::{encode_message, ExceptionKind, MessageType};
use rpc_sdk::client::{AsyncClient, ClientError, ProxyClient};
use rpc_sdk::gen::echo::{EchoSyncClient, TEchoSyncClient};
use rpc_sdk::Service;
use rpc_transport::{Address, Listener};

/// What a scripted server does with the n-th connection (0-based).
#[derive(Clone, Copy)]
enum Script {
    /// Answer every `echo` call with "pong", checking the SPEC §3 name.
    Answer,
    /// Answer one call, then close.
    AnswerOnceThenClose,
    /// Read one call and close without answering.
    DropCall,
}

/// A raw server following `scripts[n]` for connection n (the last script
/// repeats); returns its address and the number of connections accepted.
async fn scripted(scripts: Vec<Script>) -> (Address, Arc<AtomicUsize>) {
    let l = Listener::bind(&"127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = l.local_address();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok(s) = l.accept().await else { return };
            let n = count.fetch_add(1, Ordering::SeqCst);
            let script = scripts[n.min(scripts.len() - 1)];
            tokio::spawn(async move {
                let mut p = Peer::new(s);
                while let Some(m) = p.recv().await {
                    assert_eq!(m.kind(), MessageType::Call);
                    assert_eq!(
                        m.name(),
                        b"echo:echo",
                        "TMultiplexedProtocol name, strict header"
                    );
                    if let Script::DropCall = script {
                        return;
                    }
                    let reply = encode_message(
                        MessageType::Reply,
                        b"echo",
                        m.seqid(),
                        &string_result("pong"),
                    );
                    p.send_frame(reply).await;
                    if let Script::AnswerOnceThenClose = script {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

fn echo_client(
    addr: &Address,
) -> EchoSyncClient<rpc_sdk::client::ProxyInputProtocol, rpc_sdk::client::ProxyOutputProtocol> {
    let (i, o) = ProxyClient::connect(addr, "echo", STEP)
        .unwrap()
        .into_protocols();
    EchoSyncClient::new(i, o)
}

#[tokio::test]
async fn generated_client_sends_service_colon_method_frames() {
    let (addr, accepted) = scripted(vec![Script::Answer]).await;
    tokio::task::spawn_blocking(move || {
        let mut c = echo_client(&addr);
        for _ in 0..3 {
            assert_eq!(c.echo("ping".into()).unwrap(), "pong");
        }
    })
    .await
    .unwrap();
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one connection for every call"
    );
}

#[tokio::test]
async fn reconnects_transparently_after_the_server_closed_an_idle_connection() {
    let (addr, accepted) = scripted(vec![Script::AnswerOnceThenClose]).await;
    let a = accepted.clone();
    tokio::task::spawn_blocking(move || {
        let mut c = echo_client(&addr);
        for i in 1..=3 {
            assert_eq!(c.echo("ping".into()).unwrap(), "pong");
            // Wait until the server has closed this connection.
            let deadline = std::time::Instant::now() + STEP;
            while a.load(Ordering::SeqCst) < i {
                assert!(std::time::Instant::now() < deadline);
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        3,
        "a new connection per call"
    );
}

#[tokio::test]
async fn a_call_cut_off_fails_and_the_next_call_reconnects() {
    let (addr, accepted) = scripted(vec![Script::DropCall, Script::Answer]).await;
    tokio::task::spawn_blocking(move || {
        let mut c = echo_client(&addr);
        let err = c
            .echo("ping".into())
            .expect_err("the server hung up mid-call");
        assert!(matches!(err, thrift::Error::Transport(_)), "{err:?}");
        assert_eq!(c.echo("ping".into()).unwrap(), "pong");
        assert_eq!(c.echo("ping".into()).unwrap(), "pong");
    })
    .await
    .unwrap();
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn connect_to_nothing_is_an_error() {
    let l = Listener::bind(&"127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = l.local_address();
    drop(l);
    let r =
        tokio::task::spawn_blocking(move || ProxyClient::connect(&addr, "echo", STEP).map(|_| ()))
            .await
            .unwrap();
    assert!(r.is_err());
}

#[tokio::test]
async fn async_client_pipelines_calls_and_maps_exceptions() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("svc.sock");
    let config = service_config(&format!(
        "stand_alone=1\nquiet_period=0\nfront_sock={}",
        sock.display()
    ));
    let svc = Service::new(config, test_handler(Default::default()))
        .start()
        .await
        .unwrap();
    let client = AsyncClient::connect(svc.address()).await.unwrap();
    let calls = (0..50).map(|i| {
        let c = &client;
        async move {
            let method = if i % 2 == 0 { "svc:slow" } else { "svc:echo" };
            let body = format!("call {i}");
            let r = c.call(method, body.as_bytes()).await.unwrap();
            assert_eq!(r.body(), body.as_bytes());
        }
    });
    let t0 = std::time::Instant::now();
    futures::future::join_all(calls).await;
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "calls ran concurrently"
    );
    match client.call("svc:bad", b"").await {
        Err(ClientError::Exception { kind, message }) => {
            assert_eq!(
                (kind, message.as_str()),
                (ExceptionKind::InternalError as i32, "bad input")
            );
        }
        other => panic!("expected an exception, got {other:?}"),
    }
    client.oneway("svc:note", b"").await.unwrap();
    svc.stop().await;
}

#[tokio::test]
async fn async_client_reconnects_after_the_connection_broke() {
    let (addr, accepted) = scripted(vec![Script::AnswerOnceThenClose]).await;
    let client = AsyncClient::connect(&addr).await.unwrap().timeout(STEP);
    for i in 1..=3 {
        let r = client.call("echo:echo", b"").await.unwrap();
        assert_eq!(r.body(), &string_result("pong")[..]);
        assert_eq!(accepted.load(Ordering::SeqCst), i);
        // The server hangs up; once the client has noticed, the next call
        // goes out on a new connection without an error.
        let deadline = tokio::time::Instant::now() + STEP;
        while client.is_connected().await {
            assert!(tokio::time::Instant::now() < deadline, "close noticed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn async_client_times_out() {
    let (addr, _) = scripted(vec![Script::DropCall]).await;
    let client = AsyncClient::connect(&addr)
        .await
        .unwrap()
        .timeout(Duration::from_millis(200));
    let r = client.call("echo:echo", b"").await;
    assert!(
        matches!(r, Err(ClientError::Disconnected | ClientError::Timeout(_))),
        "{r:?}"
    );
}
