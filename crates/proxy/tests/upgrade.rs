//! `rpc-proxy --upgrade` beside a running proxy, under load: the successor
//! takes the listening sockets and then every client connection, the old
//! process exits, and no call fails, no connection is refused or closed.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rpc_codec::MessageType;
use rpc_registry::{local::LocalRegistry, Registry};
use rpc_testkit::endpoint::TestEndpoint;
use rpc_testkit::free_port;
use rpc_testkit::Peer;
use rpc_transport::{Address, Stream};

struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
    refused: AtomicU64,
    stop: AtomicBool,
}

fn proxy(ini: &std::path::Path, dir: &std::path::Path, upgrade: bool) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rpc-proxy"));
    cmd.arg("-c").arg(ini).arg("--work-dir").arg(dir);
    if upgrade {
        cmd.arg("--upgrade");
    }
    cmd.stdin(Stdio::null()).spawn().expect("rpc-proxy starts")
}

/// A client keeping `depth` calls in flight on one connection for the
/// whole test: the connection must never close.
async fn pipelined(addr: Address, depth: i32, counts: Arc<Counts>) {
    let mut peer = Peer::new(Stream::connect(&addr).await.expect("connects"));
    let mut next = 0i32;
    for _ in 0..depth {
        peer.send(MessageType::Call, "svc:echo", next, &next.to_be_bytes())
            .await;
        next += 1;
    }
    let mut expected = 0i32;
    while !counts.stop.load(Ordering::Relaxed) {
        match peer.recv().await {
            Some(m)
                if m.kind() == MessageType::Reply
                    && m.seqid() == expected
                    && m.body() == expected.to_be_bytes() =>
            {
                counts.ok.fetch_add(1, Ordering::Relaxed);
            }
            other => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
                panic!("call {expected} on a pipelined connection: {other:?}");
            }
        }
        expected += 1;
        peer.send(MessageType::Call, "svc:echo", next, &next.to_be_bytes())
            .await;
        next += 1;
    }
}

/// A client opening a new connection for each call.
async fn connecting(addr: Address, counts: Arc<Counts>) {
    let mut seqid = 0;
    while !counts.stop.load(Ordering::Relaxed) {
        let Ok(stream) = Stream::connect(&addr).await else {
            counts.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let mut peer = Peer::new(stream);
        peer.send(MessageType::Call, "svc:echo", seqid, b"fresh")
            .await;
        match peer.recv().await {
            Some(m) if m.kind() == MessageType::Reply && m.body() == b"fresh" => {
                counts.ok.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        seqid += 1;
    }
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let until = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < until,
            "process still running after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_under_load_fails_no_call_and_refuses_no_connection() {
    let dir = tempfile::tempdir().unwrap();
    let registry = LocalRegistry::open(&dir.path().join("registry"), "test").unwrap();
    let endpoint = TestEndpoint::start("a").await;
    let _registration = registry.register(endpoint.endpoint("svc")).await.unwrap();

    let tcp: Address = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let unix = Address::Unix(dir.path().join("proxy.sock"));
    let ini = dir.path().join("proxy.ini");
    std::fs::write(
        &ini,
        format!(
            "zk = local:{}\nproduct = test\nproxy_address = {tcp},{unix}\n\
             metrics_address = 127.0.0.1:{}\nstop_timeout = 10\n",
            dir.path().join("registry").display(),
            free_port()
        ),
    )
    .unwrap();
    let mut old = proxy(&ini, dir.path(), false);
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(s) = Stream::connect(&tcp).await {
            let mut p = Peer::new(s);
            p.send(MessageType::Call, "svc:echo", 1, b"up").await;
            if p.recv()
                .await
                .is_some_and(|m| m.kind() == MessageType::Reply)
            {
                break;
            }
        }
        assert!(Instant::now() < until, "proxy never routed to the endpoint");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let counts = Arc::new(Counts {
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let mut load = Vec::new();
    for addr in [&tcp, &unix, &tcp, &unix] {
        load.push(tokio::spawn(pipelined(addr.clone(), 4, counts.clone())));
    }
    for addr in [&tcp, &unix] {
        load.push(tokio::spawn(connecting(addr.clone(), counts.clone())));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = counts.ok.load(Ordering::Relaxed);
    assert!(before > 0, "load runs");

    let mut new = proxy(&ini, dir.path(), true);
    let status = tokio::task::block_in_place(|| wait_exit(&mut old, Duration::from_secs(20)));
    assert!(status.success(), "the old proxy exits cleanly: {status}");
    let handed = counts.ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    counts.stop.store(true, Ordering::Relaxed);
    for t in load {
        tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("load stops")
            .expect("no client saw a failure");
    }
    let (ok, failed, refused) = (
        counts.ok.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
        counts.refused.load(Ordering::Relaxed),
    );
    eprintln!("upgrade under load: {ok} calls answered ({handed} before the old proxy exited), {failed} failed, {refused} refused");
    assert_eq!((failed, refused), (0, 0), "{ok} calls answered");
    assert!(
        ok > handed,
        "calls flow through the successor ({handed} → {ok})"
    );

    // The successor can be upgraded in turn, and stops like any proxy.
    unsafe { libc::kill(new.id() as i32, libc::SIGTERM) };
    let status = tokio::task::block_in_place(|| wait_exit(&mut new, Duration::from_secs(20)));
    assert!(status.success(), "the successor stops cleanly: {status}");
}
