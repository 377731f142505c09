//! TLS on the proxy → LB hop: client → rpc-proxy ══TLS══► rpc-lb → workers,
//! with certificates made for the test.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use rpc_codec::MessageType;
use rpc_testkit::http_get;
use rpc_testkit::logs::Logs;
use rpc_testkit::tls::TestCa;
use rpc_transport::handoff;

async fn proxy(
    reg: &MemRegistry,
    tls: Option<rpc_transport::tls::TlsFiles>,
) -> rpc_proxy::ProxyHandle {
    let mut config = rpc_config::Config::parse("metrics_address=127.0.0.1:0").unwrap();
    config.proxy_address = vec!["127.0.0.1:0".parse().unwrap()];
    config.tls = tls.unwrap_or_default();
    rpc_proxy::start(&config, Arc::new(reg.clone()))
        .await
        .expect("proxy starts")
}

async fn lb_on(reg: &MemRegistry, tls: Option<rpc_transport::tls::TlsFiles>) -> rpc_lb::LbHandle {
    let mut config = lb_config("metrics_address=127.0.0.1:0");
    config.tls = tls.unwrap_or_default();
    rpc_lb::start(&config, Arc::new(reg.clone()))
        .await
        .expect("LB starts")
}

/// One service, two LBs with 4 workers each: `secure` (TLS, workers
/// tagged "secure") and `plain` (tagged "plain"), both registered.
async fn secure_and_plain(
    ca: &TestCa,
) -> (
    MemRegistry,
    rpc_lb::LbHandle,
    rpc_lb::LbHandle,
    Vec<TestWorker>,
) {
    let reg = MemRegistry::new();
    let secure = lb_on(&reg, Some(ca.server("lb"))).await;
    let plain = lb_on(&reg, None).await;
    let mut ws = workers(&secure, &["secure"], 4).await;
    ws.extend(workers(&plain, &["plain"], 4).await);
    eventually("both registered", || reg.endpoints("echo").len() == 2).await;
    (reg, secure, plain, ws)
}

/// `n` calls of `echo:tag` (each answered with its worker's tag).
async fn tags(client: &mut Client, n: i32) -> Vec<String> {
    for i in 0..n {
        client.send(MessageType::Call, "echo:tag", i, b"").await;
    }
    let mut out = Vec::new();
    for _ in 0..n {
        let r = client.recv().await.expect("reply");
        assert_eq!(r.kind(), MessageType::Reply, "{:?}", exception_text(&r));
        out.push(String::from_utf8_lossy(r.body()).into_owned());
    }
    out
}

#[tokio::test]
async fn calls_reach_a_tls_lb_through_a_proxy_with_keys() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "fleet");
    let reg = MemRegistry::new();
    let lb = lb_on(&reg, Some(ca.server("lb"))).await;
    let _w = workers(&lb, &["secure"], 4).await;
    eventually("LB registered", || reg.endpoints("echo").len() == 1).await;
    assert!(
        reg.endpoints("echo")[0].tls,
        "registered with \"tls\": true"
    );

    let proxy = proxy(&reg, Some(ca.client("proxy"))).await;
    let mut client = Client::connect(&proxy.addresses()[0]).await;
    let got = tags(&mut client, 50).await;
    assert!(got.iter().all(|t| t == "secure"));

    // Each side's status page says which side of TLS it takes.
    let page = http_get(lb.metrics_address().unwrap(), "/status").await;
    assert!(
        page.contains(r#""tls":"TLS only, clients signed by "#),
        "{page}"
    );
    let page = http_get(proxy.metrics_address().unwrap(), "/status").await;
    assert!(
        page.contains(r#""tls":"to endpoints that registered it, CA "#),
        "{page}"
    );
    proxy.shutdown().await;
    lb.stop().await;
}

#[tokio::test]
async fn one_service_with_tls_and_plain_endpoints_uses_both() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "fleet");
    let (reg, secure, plain, _workers) = secure_and_plain(&ca).await;

    let proxy = proxy(&reg, Some(ca.client("proxy"))).await;
    let mut client = Client::connect(&proxy.addresses()[0]).await;
    // Both take calls (round robin or p2c, both get some of 200).
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        seen.extend(tags(&mut client, 10).await);
        if seen.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen.len(), 2, "calls reached {seen:?}");
    proxy.shutdown().await;
    secure.stop().await;
    plain.stop().await;
}

#[tokio::test]
async fn a_proxy_without_keys_skips_tls_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "fleet");
    let (reg, secure, plain, _workers) = secure_and_plain(&ca).await;

    let proxy = proxy(&reg, None).await;
    let mut client = Client::connect(&proxy.addresses()[0]).await;
    let got = tags(&mut client, 100).await;
    assert!(got.iter().all(|t| t == "plain"), "{got:?}");
    proxy.shutdown().await;

    // Only the TLS endpoint left: calls fail as for a service without
    // endpoints, not by reaching the endpoint in plain frames.
    plain.stop().await;
    eventually("plain endpoint gone", || reg.endpoints("echo").len() == 1).await;
    let proxy = crate::proxy(&reg, None).await;
    let mut client = Client::connect(&proxy.addresses()[0]).await;
    client.send(MessageType::Call, "echo:tag", 1, b"").await;
    let r = client.recv().await.expect("an answer");
    assert_eq!(r.kind(), MessageType::Exception);
    assert_eq!(secure.stats().inflight, 0);
    proxy.shutdown().await;
    secure.stop().await;
}

#[tokio::test]
async fn a_proxy_signed_by_another_ca_gets_no_calls_through() {
    let (logs, _guard) = Logs::capture();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "fleet");
    let other = TestCa::new(dir.path(), "other");
    let reg = MemRegistry::new();
    let lb = lb_on(&reg, Some(ca.server("lb"))).await;
    let w = workers(&lb, &["secure"], 4).await;
    eventually("LB registered", || reg.endpoints("echo").len() == 1).await;

    // Trusts the LB, but its own certificate is not the fleet's.
    let files = other.client_trusting("intruder", &ca);
    let proxy = proxy(&reg, Some(files)).await;
    let mut client = Client::connect(&proxy.addresses()[0]).await;
    for i in 0..5 {
        client.send(MessageType::Call, "echo:tag", i, b"").await;
        let r = client.recv().await.expect("an answer");
        assert_eq!(r.kind(), MessageType::Exception);
    }
    assert_eq!(w[0].calls(), 0);
    // The proxy's operator learns why: TLS 1.3 finishes the client's side of
    // the handshake before the LB checks its certificate, so the refusal
    // arrives as an alert on the connection.
    eventually("the proxy logs the LB's alert", || {
        logs.text()
            .lines()
            .any(|l| l.contains("backend connection lost") && l.contains("alert"))
    })
    .await;
    proxy.shutdown().await;
    lb.stop().await;
}

/// Calls through the proxy at `addr` on `conns` connections, each one after
/// another, until `stop`: how many were answered, and the failures' texts.
fn load(
    addr: rpc_transport::Address,
    conns: usize,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    tokio::spawn(async move {
        let tasks: Vec<_> = (0..conns)
            .map(|_| {
                let (addr, stop) = (addr.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut client = Client::connect(&addr).await;
                    let (mut ok, mut failed) = (0, Vec::new());
                    for seqid in 0.. {
                        if *stop.borrow() {
                            break;
                        }
                        client.send(MessageType::Call, "echo:tag", seqid, b"").await;
                        let r = client.recv().await.expect("an answer");
                        match r.kind() {
                            MessageType::Reply => ok += 1,
                            _ => failed.push(exception_text(&r).1),
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();
        let mut total = (0, Vec::new());
        for t in tasks {
            let (ok, failed) = t.await.unwrap();
            total.0 += ok;
            total.1.extend(failed);
        }
        total
    })
}

/// Upgrades `old` to a successor started with `config` as `rpc-lb
/// --upgrade` would. Both finish once the old LB's connections are done:
/// the successor (with how many connections it adopted) and the old LB's
/// hand-off.
async fn upgrade(
    old: rpc_lb::LbHandle,
    config: &rpc_config::Config,
    reg: &MemRegistry,
    dir: &std::path::Path,
) -> (
    tokio::task::JoinHandle<(rpc_lb::LbHandle, usize)>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let control = dir.join("lb.upgrade");
    let listening = handoff::Handoff::listen(&control).unwrap();
    let (config2, reg2) = (config.clone(), reg.clone());
    let successor = tokio::spawn(async move {
        let (sockets, mut takeover) = handoff::take_over(&control).await.unwrap();
        let lb = rpc_lb::start_on(&config2, Arc::new(reg2), sockets)
            .await
            .unwrap();
        takeover.ready().await.unwrap();
        let mut adopted = 0;
        while let Some((stream, read)) = takeover.next_connection().await.unwrap() {
            lb.adopt(stream, read);
            adopted += 1;
        }
        lb.register_now().await;
        takeover.finished().await.unwrap();
        (lb, adopted)
    });
    let mut up = listening.accept().await.unwrap();
    old.upgrade_to(&mut up).await.unwrap();
    // The old LB's workers finish; the successor needs its own.
    let hand_off = tokio::spawn(old.hand_off(up));
    (successor, hand_off)
}

/// A call in flight when the LB sends `STOP` is answered even if it takes
/// longer than the proxy's heartbeat timeout: after confirming, the proxy
/// sends no heartbeat the LB would not read, and silence is no sign of
/// death until the drain timeout.
#[tokio::test]
async fn a_slow_call_in_flight_through_a_tls_lb_upgrade_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "fleet");
    let reg = MemRegistry::new();
    let mut config = lb_config("");
    config.tls = ca.server("lb");
    let old = rpc_lb::start(&config, Arc::new(reg.clone())).await.unwrap();
    let w_old = workers(&old, &["old"], 4).await;
    eventually("LB registered", || reg.endpoints("echo").len() == 1).await;
    let mut proxy_config = rpc_config::Config::parse(
        "heartbeat_interval_ms=100\nheartbeat_timeout_ms=400\nrpc_timeout=5",
    )
    .unwrap();
    proxy_config.proxy_address = vec!["127.0.0.1:0".parse().unwrap()];
    proxy_config.tls = ca.client("proxy");
    let proxy = rpc_proxy::start(&proxy_config, Arc::new(reg.clone()))
        .await
        .expect("proxy starts");
    let mut client = Client::connect(&proxy.addresses()[0]).await;
    assert!(tags(&mut client, 2).await.iter().all(|t| t == "old"));

    // Held by the old worker until released, well past the heartbeat timeout.
    client
        .send(MessageType::Call, "echo:block", 7, b"late")
        .await;
    eventually("the call reached the worker", || old.stats().inflight == 1).await;
    let (successor, hand_off) = upgrade(old, &config, &reg, dir.path()).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    w_old[0].release(1);
    let r = client.recv().await.expect("an answer");
    assert_eq!(r.kind(), MessageType::Reply, "{:?}", exception_text(&r));
    assert_eq!(r.body(), b"late");
    let (new, adopted) = tokio::time::timeout(STEP, successor)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(adopted, 0);
    tokio::time::timeout(STEP, hand_off)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    // Calls go on, to the successor.
    let _w_new = workers(&new, &["new"], 4).await;
    assert!(tags(&mut client, 5).await.iter().all(|t| t == "new"));
    proxy.shutdown().await;
    new.stop().await;
}

/// The LB asks the proxy to stop using a TLS connection it cannot hand
/// over, and closes it only once the proxy confirmed: under load, no call
/// is lost, and the proxy reopens the connection at once, to the successor.
#[tokio::test]
async fn an_lb_upgrade_closes_tls_connections_and_the_proxy_reconnects_to_the_successor() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "fleet");
    let reg = MemRegistry::new();
    let mut config = lb_config("");
    config.tls = ca.server("lb");
    let old = rpc_lb::start(&config, Arc::new(reg.clone())).await.unwrap();
    let _w_old = workers(&old, &["old"], 4).await;
    eventually("LB registered", || reg.endpoints("echo").len() == 1).await;
    let proxy = proxy(&reg, Some(ca.client("proxy"))).await;
    let mut client = Client::connect(&proxy.addresses()[0]).await;
    assert!(tags(&mut client, 10).await.iter().all(|t| t == "old"));
    // Let the backend connection live past its quick-reconnect threshold.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (stop_load, stop) = tokio::sync::watch::channel(false);
    let loaded = load(proxy.addresses()[0].clone(), 4, stop);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let (successor, hand_off) = upgrade(old, &config, &reg, dir.path()).await;
    let (new, adopted) = tokio::time::timeout(STEP, successor)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(adopted, 0, "a TLS connection is never handed over");
    let _w_new = workers(&new, &["new"], 4).await;
    tokio::time::timeout(STEP, hand_off)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    // The proxy reopened its connection at once, to the successor.
    let t0 = tokio::time::Instant::now();
    let mut got = Vec::new();
    while !got.iter().any(|t: &String| t == "new") {
        assert!(t0.elapsed() < STEP, "no call reached the successor");
        client.send(MessageType::Call, "echo:tag", 99, b"").await;
        let r = client.recv().await.expect("an answer");
        if r.kind() == MessageType::Reply {
            got.push(String::from_utf8_lossy(r.body()).into_owned());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        t0.elapsed() < Duration::from_millis(900),
        "reconnected after a backoff: {:?}",
        t0.elapsed()
    );
    stop_load.send(true).unwrap();
    let (answered, failed) = loaded.await.unwrap();
    println!(
        "upgrade under load: {answered} calls answered, {} failed",
        failed.len()
    );
    assert!(answered > 100, "{answered} calls answered");
    assert!(failed.is_empty(), "failed calls: {failed:?}");
    proxy.shutdown().await;
    new.stop().await;
}
