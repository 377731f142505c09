//! The service server on real loopback sockets.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rpc_codec::{ExceptionKind, MessageType};
use rpc_sdk::client::ProxyClient;
use rpc_sdk::gen::echo::{
    EchoError, EchoSyncClient, EchoSyncHandler, EchoSyncProcessor, TEchoSyncClient,
};
use rpc_sdk::{Service, ServiceHandle, ThriftProcessor};
use tokio::io::AsyncWriteExt;

async fn start(extra: &str) -> (ServiceHandle, MemRegistry, Arc<AtomicUsize>) {
    let registry = MemRegistry::new();
    let oneways = Arc::new(AtomicUsize::new(0));
    let config = service_config(&format!("service=svc\nquiet_period=0\n{extra}"));
    let handle = Service::new(config, test_handler(oneways.clone()))
        .with_registry(Arc::new(registry.clone()))
        .start()
        .await
        .expect("service starts");
    (handle, registry, oneways)
}

#[tokio::test]
async fn pipelined_requests_are_answered_as_they_finish() {
    let (svc, _reg, _) = start("").await;
    let mut c = Peer::connect(svc.address()).await;
    c.send(MessageType::Call, "slow", 1, b"first").await;
    c.send(MessageType::Call, "echo", 2, b"second").await;
    let a = c.recv().await.unwrap();
    let b = c.recv().await.unwrap();
    assert_eq!(
        (a.seqid(), a.body()),
        (2, &b"second"[..]),
        "fast reply first"
    );
    assert_eq!((b.seqid(), b.body()), (1, &b"first"[..]));
    assert_eq!(a.kind(), MessageType::Reply);
    svc.stop().await;
}

#[tokio::test]
async fn many_slow_requests_run_concurrently() {
    let (svc, _reg, _) = start("").await;
    let mut c = Peer::connect(svc.address()).await;
    let t0 = Instant::now();
    for i in 0..20 {
        c.send(MessageType::Call, "slow", i, b"x").await;
    }
    let mut seen: Vec<i32> = Vec::new();
    for _ in 0..20 {
        seen.push(c.recv().await.unwrap().seqid());
    }
    seen.sort();
    assert_eq!(seen, (0..20).collect::<Vec<_>>());
    // 20 × 300 ms one after another would take 6 s.
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t0.elapsed()
    );
    svc.stop().await;
}

#[tokio::test]
async fn heartbeats_are_echoed_unchanged() {
    let (svc, _reg, _) = start("").await;
    let mut c = Peer::connect(svc.address()).await;
    let hb = rpc_codec::heartbeat(77);
    c.send_frame(hb.clone()).await;
    assert_eq!(c.recv_frame().await.unwrap(), hb);
    svc.stop().await;
}

#[tokio::test]
async fn oneway_gets_no_reply_and_runs() {
    let (svc, _reg, oneways) = start("").await;
    let mut c = Peer::connect(svc.address()).await;
    c.send(MessageType::Oneway, "svc:note", 5, b"").await;
    let r = c.call("echo", 6, b"after").await;
    assert_eq!(
        r.seqid(),
        6,
        "the first frame back answers the call, not the oneway"
    );
    eventually("oneway handled", || oneways.load(Ordering::SeqCst) == 1).await;
    svc.stop().await;
}

#[tokio::test]
async fn service_prefix_is_stripped_and_reply_named_bare() {
    let (svc, _reg, _) = start("").await;
    let mut c = Peer::connect(svc.address()).await;
    let r = c.call("svc:echo", 9, b"abc").await;
    assert_eq!(
        (r.name(), r.seqid(), r.body()),
        (&b"echo"[..], 9, &b"abc"[..])
    );
    svc.stop().await;
}

#[tokio::test]
async fn handler_errors_and_panics_become_exceptions_and_the_server_keeps_serving() {
    let (svc, _reg, _) = start("").await;
    let mut c = Peer::connect(svc.address()).await;
    let r = c.call("bad", 1, b"").await;
    assert_eq!(r.seqid(), 1);
    assert_eq!(
        exception_of(&r),
        (ExceptionKind::InternalError as i32, "bad input".into())
    );
    let r = c.call("panic", 2, b"").await;
    let (kind, msg) = exception_of(&r);
    assert_eq!((kind, r.seqid()), (ExceptionKind::InternalError as i32, 2));
    assert!(msg.contains("handler exploded"), "{msg}");
    let r = c.call("echo", 3, b"still here").await;
    assert_eq!(r.body(), b"still here");
    svc.stop().await;
}

#[tokio::test]
async fn bad_input_closes_only_that_connection() {
    let (svc, _reg, _) = start("max_frame_size=1000").await;
    let mut good = Peer::connect(svc.address()).await;
    let mut bad = Peer::connect(svc.address()).await;
    bad.io
        .get_mut()
        .write_all(&5000u32.to_be_bytes())
        .await
        .unwrap();
    let r = bad.recv().await.expect("an error reply before closing");
    let (kind, msg) = exception_of(&r);
    assert_eq!(kind, ExceptionKind::ProtocolError as i32);
    assert!(msg.contains("5000"), "{msg}");
    assert!(bad.recv_frame().await.is_none(), "connection closed");

    // A non-strict header is refused the same way.
    let mut old = Peer::connect(svc.address()).await;
    let mut raw = Vec::new();
    raw.extend_from_slice(&13u32.to_be_bytes());
    raw.extend_from_slice(&4u32.to_be_bytes());
    raw.extend_from_slice(b"echo");
    raw.push(1);
    raw.extend_from_slice(&7i32.to_be_bytes());
    old.io.get_mut().write_all(&raw).await.unwrap();
    let r = old.recv().await.unwrap();
    assert_eq!((r.name(), r.seqid()), (&b"echo"[..], 7));
    assert_eq!(exception_of(&r).0, ExceptionKind::ProtocolError as i32);
    assert!(old.recv_frame().await.is_none());

    assert_eq!(good.call("echo", 1, b"ok").await.body(), b"ok");
    svc.stop().await;
}

#[tokio::test]
async fn registers_once_listening_and_deregisters_first_on_stop() {
    let (svc, reg, _) = start("quiet_period=0.3").await;
    let eps = reg.endpoints("svc");
    assert_eq!(eps.len(), 1);
    assert_eq!(eps[0].frontend, svc.address().to_string());
    // The registered address answers right away.
    let mut c = Peer::connect(svc.address()).await;
    assert_eq!(c.call("echo", 1, b"x").await.body(), b"x");

    let addr = svc.address().clone();
    let stopping = tokio::spawn(svc.stop());
    eventually("deregistered", || reg.endpoints("svc").is_empty()).await;
    // Still serving during the quiet period.
    assert!(!stopping.is_finished());
    assert_eq!(c.call("echo", 2, b"y").await.body(), b"y");
    tokio::time::timeout(STEP, stopping)
        .await
        .expect("stop ends")
        .unwrap();
    assert!(
        c.recv_frame().await.is_none(),
        "connection closed after stop"
    );
    assert!(
        rpc_transport::Stream::connect(&addr).await.is_err(),
        "listener closed"
    );
}

#[tokio::test]
async fn stop_completes_a_call_in_flight() {
    let (svc, _reg, _) = start("").await;
    let mut c = Peer::connect(svc.address()).await;
    c.send(MessageType::Call, "sleep", 4, b"400").await;
    eventually("call in flight", || svc.inflight() == 1).await;
    let t0 = Instant::now();
    let stopping = tokio::spawn(svc.stop());
    let r = c.recv().await.expect("reply before close");
    assert_eq!(
        (r.kind(), r.seqid(), r.body()),
        (MessageType::Reply, 4, &b"400"[..])
    );
    tokio::time::timeout(STEP, stopping)
        .await
        .expect("stop ends")
        .unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn stop_timeout_bounds_a_stuck_call() {
    let (svc, _reg, _) = start("stop_timeout=0.3").await;
    let mut c = Peer::connect(svc.address()).await;
    c.send(MessageType::Call, "sleep", 1, b"60000").await;
    eventually("call in flight", || svc.inflight() == 1).await;
    let t0 = Instant::now();
    tokio::time::timeout(STEP, svc.stop())
        .await
        .expect("stop is bounded");
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn stand_alone_serves_without_registering() {
    let registry = MemRegistry::new();
    // No `service` name and a registry nobody could reach: neither is needed.
    let config = service_config("stand_alone=1\nzk=127.0.0.1:1\nquiet_period=0");
    let svc = Service::new(config, test_handler(Default::default()))
        .with_registry(Arc::new(registry.clone()))
        .start()
        .await
        .expect("starts stand-alone");
    let mut c = Peer::connect(svc.address()).await;
    assert_eq!(c.call("echo", 1, b"solo").await.body(), b"solo");
    assert!(registry.map_is_empty());
    svc.stop().await;
}

#[tokio::test]
async fn missing_service_name_is_a_clear_error() {
    let config = service_config("quiet_period=0");
    let err = Service::new(config, test_handler(Default::default()))
        .with_registry(Arc::new(MemRegistry::new()))
        .start()
        .await
        .err()
        .expect("refuses to start");
    assert!(err.to_string().contains("service"), "{err:#}");
}

#[tokio::test]
async fn listens_on_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("svc.sock");
    let config = service_config(&format!(
        "stand_alone=1\nfront_sock={}\nquiet_period=0",
        sock.display()
    ));
    let svc = Service::new(config, test_handler(Default::default()))
        .start()
        .await
        .unwrap();
    assert!(svc.address().is_unix());
    let mut c = Peer::connect(svc.address()).await;
    assert_eq!(c.call("echo", 1, b"unix").await.body(), b"unix");
    svc.stop().await;
}

#[tokio::test]
async fn listens_on_several_addresses_registers_each_and_counts_what_it_served() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("svc.sock");
    let registry = MemRegistry::new();
    let config = service_config("service=svc\nquiet_period=0");
    let svc = Service::new(config, test_handler(Default::default()))
        .with_registry(Arc::new(registry.clone()))
        .listen_on([
            "127.0.0.1:0".parse().unwrap(),
            rpc_transport::Address::Unix(sock.clone()),
        ])
        .start()
        .await
        .unwrap();
    let addrs = svc.addresses().to_vec();
    assert_eq!(addrs.len(), 2);
    assert!(!addrs[0].is_unix() && addrs[1].is_unix());
    let mut registered: Vec<String> = registry
        .endpoints("svc")
        .into_iter()
        .map(|e| e.frontend)
        .collect();
    registered.sort();
    let mut expected: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    expected.sort();
    assert_eq!(registered, expected);

    let mut tcp = Peer::connect(&addrs[0]).await;
    let mut unix = Peer::connect(&addrs[1]).await;
    assert_eq!(tcp.call("echo", 1, b"tcp").await.body(), b"tcp");
    assert_eq!(unix.call("echo", 2, b"unix").await.body(), b"unix");
    tcp.send_frame(rpc_codec::heartbeat(3)).await;
    tcp.recv_frame().await.unwrap();
    // Heartbeats are not requests.
    assert_eq!((svc.stats().connections, svc.stats().requests), (2, 2));
    svc.stop().await;
    assert!(registry.endpoints("svc").is_empty());
}

#[tokio::test]
async fn reading_pauses_at_max_inflight() {
    let (svc, _reg, _) = start("max_inflight=1").await;
    let mut c = Peer::connect(svc.address()).await;
    c.send(MessageType::Call, "slow", 1, b"first").await;
    c.send(MessageType::Call, "echo", 2, b"second").await;
    // With room for one request only, the echo is read (and answered)
    // after the slow call, not before it as without the limit.
    let a = c.recv().await.unwrap();
    let b = c.recv().await.unwrap();
    assert_eq!((a.seqid(), b.seqid()), (1, 2));
    assert_eq!(b.body(), b"second");
    svc.stop().await;
}

struct Echo;

impl EchoSyncHandler for Echo {
    fn handle_echo(&self, message: String) -> thrift::Result<String> {
        Ok(message)
    }
    fn handle_add(&self, a: i64, b: i64) -> thrift::Result<i64> {
        Ok(a + b)
    }
    fn handle_sleep(&self, ms: i32) -> thrift::Result<String> {
        std::thread::sleep(Duration::from_millis(ms as u64));
        Ok(ms.to_string())
    }
    fn handle_fail(&self, message: String) -> thrift::Result<()> {
        if message == "panic" {
            panic!("processor exploded");
        }
        Err(EchoError::new(message).into())
    }
    fn handle_notify(&self, _message: String) -> thrift::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn generated_processor_serves_a_generated_client() {
    let config = service_config("stand_alone=1\nquiet_period=0");
    let svc = Service::new(config, ThriftProcessor::new(EchoSyncProcessor::new(Echo)))
        .start()
        .await
        .unwrap();
    let addr = svc.address().clone();
    tokio::task::spawn_blocking(move || {
        let (i, o) = ProxyClient::connect(&addr, "echo", STEP)
            .unwrap()
            .into_protocols();
        let mut c = EchoSyncClient::new(i, o);
        assert_eq!(c.echo("hi".into()).unwrap(), "hi");
        assert_eq!(c.add(40, 2).unwrap(), 42);
        match c.fail("nope".into()) {
            Err(thrift::Error::User(e)) => {
                let e = e.downcast_ref::<EchoError>().expect("an EchoError");
                assert_eq!(e.message.as_deref(), Some("nope"));
            }
            other => panic!("expected EchoError, got {other:?}"),
        }
        match c.fail("panic".into()) {
            Err(thrift::Error::Application(e)) => {
                assert!(e.message.contains("processor exploded"), "{e:?}")
            }
            other => panic!("expected an application error, got {other:?}"),
        }
        c.notify("n".into()).unwrap();
        assert_eq!(c.sleep(10).unwrap(), "10");
        assert_eq!(c.echo("after".into()).unwrap(), "after");
    })
    .await
    .unwrap();
    svc.stop().await;
}
