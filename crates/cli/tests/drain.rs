//! `rpcctl drain` / `rpcctl undrain`: against a real ZooKeeper with a real
//! proxy under a steady load of concurrent calls (the drained endpoint
//! gets no new call, none fails, undrain brings it back), and against the
//! embedded registry for the command's own behaviour (output, errors,
//! `--force`).

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{endpoint, rows_with, rpcctl};
use rpc_codec::MessageType;
use rpc_registry::local::LocalRegistry;
use rpc_registry::zk::ZkRegistry;
use rpc_registry::Registry;
use rpc_testkit::endpoint::TestEndpoint;
use rpc_testkit::{eventually, http_get, Peer, ZkServer, STEP};
use serde_json::Value;

const SESSION: Duration = Duration::from_secs(5);

/// Concurrent callers through the proxy, each making one call after
/// another until stopped, counting calls and failures.
struct Load {
    calls: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn start(proxy: &rpc_transport::Address, callers: usize) -> Load {
        let calls = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for _ in 0..callers {
            let mut peer = Peer::connect(proxy).await;
            let (calls, failed, stop) = (calls.clone(), failed.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut seqid = 0;
                while !stop.load(Ordering::SeqCst) {
                    seqid += 1;
                    let reply = peer.call("echo:echo", seqid, b"payload").await;
                    if (reply.kind(), reply.body()) != (MessageType::Reply, &b"payload"[..]) {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                    calls.fetch_add(1, Ordering::SeqCst);
                }
            }));
        }
        Load {
            calls,
            failed,
            stop,
            tasks,
        }
    }

    /// Stops the callers; how many calls they made, and how many failed.
    async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.expect("a caller panicked");
        }
        (
            self.calls.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        )
    }
}

fn calls(e: &TestEndpoint) -> usize {
    e.calls.load(Ordering::SeqCst)
}

/// Waits until `e` has had `more` calls beyond now.
async fn gets_calls(e: &TestEndpoint, more: usize) {
    let from = calls(e);
    eventually(&format!("{more} more calls reach {}", e.tag), || {
        calls(e) >= from + more
    })
    .await;
}

/// The proxy's `/status` row of endpoint `address`.
async fn status_row(metrics: std::net::SocketAddr, address: &str) -> Value {
    let status: Value = serde_json::from_str(&http_get(metrics, "/status").await).unwrap();
    status["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["endpoint"] == address)
        .cloned()
        .unwrap_or_else(|| panic!("no {address} in {status}"))
}

/// Waits until the proxy's `/status` row of `address` satisfies `cond`;
/// its connection must stay up throughout.
async fn proxy_shows(
    metrics: std::net::SocketAddr,
    address: &str,
    what: &str,
    cond: impl Fn(&Value) -> bool,
) {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let row = status_row(metrics, address).await;
        assert_eq!(row["state"], "Up", "the connection stays up: {row}");
        if cond(&row) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "proxy never showed {address} {what}: {row}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn proxy_sees(metrics: std::net::SocketAddr, address: &str, draining: bool) {
    let what = format!("with draining={draining}");
    proxy_shows(metrics, address, &what, |row| row["draining"] == draining).await;
}

/// Waits until the proxy shows `address` drained and with no call in
/// flight: from then on, every call the endpoint gets is a new one (a
/// call handed to it before has been answered, so it has been counted).
async fn proxy_drained(metrics: std::net::SocketAddr, address: &str) {
    proxy_shows(metrics, address, "drained and idle", |row| {
        row["draining"] == true && row["outstanding"] == 0
    })
    .await;
}

/// The `draining` field of each endpoint in a `list --json` style
/// document, by frontend.
fn draining_by_frontend(doc: &Value) -> Vec<(String, bool)> {
    doc["products"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["services"].as_array().unwrap())
        .flat_map(|s| s["endpoints"].as_array().unwrap())
        .map(|e| {
            (
                e["frontend"].as_str().unwrap().to_string(),
                e["draining"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn zookeeper_drain_under_load_moves_new_calls_and_fails_none() {
    let zk = ZkServer::start();
    let hosts = zk.hosts();
    let (a, b) = (
        TestEndpoint::start("a").await,
        TestEndpoint::start("b").await,
    );
    let (a_addr, b_addr) = (a.address.to_string(), b.address.to_string());
    let registrant = ZkRegistry::connect(&hosts, "test", SESSION).await.unwrap();
    let _ra = registrant.register(a.endpoint("echo")).await.unwrap();
    let _rb = registrant.register(b.endpoint("echo")).await.unwrap();
    // Round robin: an endpoint in the rotation gets every other call, so
    // "no call" and "calls again" show at once.
    let mut config = rpc_config::Config::parse(
        "balance=round_robin\nmetrics_address=127.0.0.1:0\nproxy_address=127.0.0.1:0",
    )
    .unwrap();
    config.zk_session_timeout = SESSION;
    let watcher = ZkRegistry::connect(&hosts, "test", SESSION).await.unwrap();
    let proxy = rpc_proxy::start(&config, Arc::new(watcher)).await.unwrap();
    let metrics = proxy.metrics_address().unwrap();
    let load = Load::start(&proxy.addresses()[0], 8).await;
    gets_calls(&a, 100).await;
    gets_calls(&b, 100).await;

    // Drain a, named by its address.
    let run = rpcctl(&["--zk", &hosts, "drain", "echo", &a_addr, "--json"]).await;
    assert!(run.ok, "{}", run.stderr);
    let doc = run.json();
    assert_eq!(
        (doc["action"].as_str(), doc["changed"].as_bool()),
        (Some("drain"), Some(true))
    );
    assert_eq!(doc["frontend"], a_addr.as_str());
    let mut expected = vec![(a_addr.clone(), true), (b_addr.clone(), false)];
    expected.sort();
    assert_eq!(draining_by_frontend(&doc), expected);
    proxy_drained(metrics, &a_addr).await;
    let a_drained_at = calls(&a);
    gets_calls(&b, 500).await;
    assert_eq!(
        calls(&a),
        a_drained_at,
        "a drained endpoint gets no new call"
    );
    let prometheus = http_get(metrics, "/metrics").await;
    let gauge = format!("rpc_proxy_endpoint_draining{{service=\"echo\",endpoint=\"{a_addr}\"}} 1");
    assert!(prometheus.contains(&gauge), "{prometheus}");

    // Undrain, named by its service_id: a takes calls again.
    let a_id = a.endpoint("echo").service_id;
    let run = rpcctl(&["--zk", &hosts, "undrain", "echo", &a_id]).await;
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stdout.starts_with("undrained test/echo"),
        "{}",
        run.stdout
    );
    proxy_sees(metrics, &a_addr, false).await;
    gets_calls(&a, 100).await;

    // Every endpoint drained: the proxy keeps using them rather than fail
    // calls, and says so.
    for addr in [&a_addr, &b_addr] {
        let run = rpcctl(&["--zk", &hosts, "drain", "echo", addr]).await;
        assert!(run.ok, "{}", run.stderr);
    }
    let last = rpcctl(&["--zk", &hosts, "drain", "echo", &b_addr]).await;
    assert!(
        last.stdout.contains("was drained already"),
        "{}",
        last.stdout
    );
    assert!(
        last.stderr
            .contains("every endpoint of test/echo is drained"),
        "{}",
        last.stderr
    );
    proxy_sees(metrics, &a_addr, true).await;
    proxy_sees(metrics, &b_addr, true).await;
    gets_calls(&a, 100).await;
    gets_calls(&b, 100).await;
    for addr in [&a_addr, &b_addr] {
        assert!(rpcctl(&["--zk", &hosts, "undrain", "echo", addr]).await.ok);
    }
    proxy_sees(metrics, &b_addr, false).await;

    let (total, failed) = load.finish().await;
    assert_eq!(failed, 0, "no call failed ({total} calls)");
    assert!(total > 1000, "the load kept running ({total} calls)");
    proxy.shutdown().await;
}

/// On the embedded registry: the table and JSON forms, `list` showing the
/// state, repeated commands changing nothing, and the mark's file.
#[tokio::test]
async fn local_drain_and_undrain_show_in_list_and_repeat_harmlessly() {
    let dir = tempfile::tempdir().unwrap();
    let zk = format!("local:{}", dir.path().display());
    let reg = LocalRegistry::open(dir.path(), "test").unwrap();
    let (a, b) = (
        endpoint("echo", "127.0.0.1:5555"),
        endpoint("echo", "127.0.0.1:5556"),
    );
    let _a = reg.register(a.clone()).await.unwrap();
    let _b = reg.register(b.clone()).await.unwrap();

    let run = rpcctl(&["--zk", &zk, "drain", "echo", "127_0_0_1_5556", "-p", "test"]).await;
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stderr.is_empty(),
        "another endpoint serves: {}",
        run.stderr
    );
    let first = run.stdout.lines().next().unwrap();
    assert_eq!(
        first,
        "drained test/echo 127.0.0.1:5556 (127_0_0_1_5556): proxies send it no new calls"
    );
    // Then the service as `list` shows it.
    let header = run.stdout.lines().nth(1).unwrap();
    assert!(
        header.split_whitespace().any(|h| h == "DRAINING"),
        "{header}"
    );
    assert_eq!(
        rows_with(&run.stdout, &["127.0.0.1:5556", "yes"]).len(),
        1,
        "{}",
        run.stdout
    );
    assert_eq!(
        rows_with(&run.stdout, &["127.0.0.1:5555", "no"]).len(),
        1,
        "{}",
        run.stdout
    );
    let mark = dir.path().join("test/drain/echo/127_0_0_1_5556.json");
    let recorded: Value = serde_json::from_slice(&std::fs::read(&mark).unwrap()).unwrap();
    assert_eq!(recorded["frontend"], "127.0.0.1:5556");
    assert!(recorded["by"].as_str().unwrap().contains('@'), "{recorded}");

    let listed = rpcctl(&["--zk", &zk, "list", "test", "echo", "--json"]).await;
    assert_eq!(
        draining_by_frontend(&listed.json()),
        [
            ("127.0.0.1:5555".into(), false),
            ("127.0.0.1:5556".into(), true)
        ]
    );

    let again = rpcctl(&["--zk", &zk, "drain", "echo", "127.0.0.1:5556", "--json"]).await;
    assert!(again.ok, "{}", again.stderr);
    let doc = again.json();
    assert_eq!(doc["changed"], false);
    assert_eq!(doc["registered"], true);
    assert_eq!(doc["service_id"], "127_0_0_1_5556");
    assert_eq!(doc["registry"], zk.as_str());

    let run = rpcctl(&["--zk", &zk, "undrain", "echo", "127.0.0.1:5556"]).await;
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stdout.starts_with("undrained test/echo 127.0.0.1:5556"),
        "{}",
        run.stdout
    );
    assert!(!mark.exists());
    let run = rpcctl(&["--zk", &zk, "undrain", "echo", "127.0.0.1:5556"]).await;
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stdout
            .starts_with("test/echo 127.0.0.1:5556 (127_0_0_1_5556) was not drained"),
        "{}",
        run.stdout
    );

    // The last endpoint drained: a warning, not a refusal.
    for e in [&a, &b] {
        let run = rpcctl(&["--zk", &zk, "drain", "echo", &e.frontend]).await;
        assert!(run.ok, "{}", run.stderr);
    }
    assert!(run_warned(&zk).await);
}

/// Whether draining again warns that every endpoint of test/echo is drained.
async fn run_warned(zk: &str) -> bool {
    let run = rpcctl(&["--zk", zk, "drain", "echo", "127.0.0.1:5555"]).await;
    run.ok
        && run
            .stderr
            .contains("every endpoint of test/echo is drained")
}

/// An endpoint that is not registered: a clear error, unless `--force`,
/// which sets (and removes) its mark by the service_id its address gives.
#[tokio::test]
async fn an_endpoint_not_registered_needs_force() {
    let dir = tempfile::tempdir().unwrap();
    let zk = format!("local:{}", dir.path().display());
    let reg = LocalRegistry::open(dir.path(), "test").unwrap();
    let _a = reg
        .register(endpoint("echo", "127.0.0.1:5555"))
        .await
        .unwrap();

    for action in ["drain", "undrain"] {
        let run = rpcctl(&["--zk", &zk, action, "echo", "127.0.0.1:7777"]).await;
        assert_eq!(run.code, Some(1), "{action}: {}", run.stdout);
        assert!(run.stdout.is_empty(), "{}", run.stdout);
        assert!(
            run.stderr
                .contains("127.0.0.1:7777 is not a registered endpoint of test/echo in local:")
                && run.stderr.contains("(registered: 127.0.0.1:5555)")
                && run.stderr.contains("--force"),
            "{action}: {}",
            run.stderr
        );
    }
    let run = rpcctl(&[
        "--zk",
        &zk,
        "drain",
        "nope",
        "127.0.0.1:5555",
        "-p",
        "online_x",
    ])
    .await;
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains("online_x/nope in local:")
            && run.stderr.contains("(no endpoint registered)"),
        "{}",
        run.stderr
    );
    assert!(!dir.path().join("test/drain").exists(), "nothing written");

    let run = rpcctl(&[
        "--zk",
        &zk,
        "drain",
        "echo",
        "127.0.0.1:7777",
        "--force",
        "--json",
    ])
    .await;
    assert!(run.ok, "{}", run.stderr);
    let doc = run.json();
    assert_eq!(doc["registered"], false);
    assert_eq!(doc["frontend"], Value::Null);
    assert_eq!(
        (doc["service_id"].as_str(), doc["changed"].as_bool()),
        (Some("127_0_0_1_7777"), Some(true))
    );
    assert_eq!(
        draining_by_frontend(&doc),
        [("127.0.0.1:5555".into(), false)],
        "others untouched"
    );
    assert!(dir
        .path()
        .join("test/drain/echo/127_0_0_1_7777.json")
        .exists());

    let run = rpcctl(&["--zk", &zk, "undrain", "echo", "127_0_0_1_7777", "--force"]).await;
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stdout
            .starts_with("undrained test/echo 127_0_0_1_7777 (not registered)"),
        "{}",
        run.stdout
    );
    assert!(!dir
        .path()
        .join("test/drain/echo/127_0_0_1_7777.json")
        .exists());
}
