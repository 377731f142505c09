//! `rpcctl ping` against live, dead and stalled endpoints registered in a
//! real ZooKeeper and in the embedded registry. Endpoints are
//! `rpc_testkit`'s scripted SPEC §4 endpoint, which echoes heartbeats.

mod common;
#[allow(dead_code)]
mod stack;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{endpoint, rows_with, rpcctl};
use rpc_registry::local::LocalRegistry;
use rpc_registry::zk::ZkRegistry;
use rpc_registry::Registry;
use rpc_testkit::endpoint::TestEndpoint;
use rpc_testkit::tls::TestCa;
use rpc_testkit::ZkServer;
use serde_json::Value;
use stack::Stack;

/// The outcome of `frontend` in a `--json` report.
fn outcome<'a>(doc: &'a Value, frontend: &str) -> &'a Value {
    doc["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["frontend"] == frontend)
        .unwrap_or_else(|| panic!("no {frontend} in {doc}"))
}

#[tokio::test]
async fn zookeeper_live_dead_and_stalled_endpoints() {
    let zk = ZkServer::start();
    let hosts = zk.hosts();
    let reg = ZkRegistry::connect(&hosts, "test", Duration::from_secs(5))
        .await
        .unwrap();
    let live = TestEndpoint::start("live").await;
    let live_addr = live.address.to_string();
    // Registered, but nothing listens there any more.
    let dead_addr = format!("127.0.0.1:{}", rpc_testkit::free_port());
    // Accepts connections but reads nothing: no echo ever comes.
    let stalled = TestEndpoint::start("stalled").await;
    stalled
        .stalled
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let stalled_addr = stalled.address.to_string();
    let _l = reg.register(endpoint("echo", &live_addr)).await.unwrap();
    let _d = reg.register(endpoint("echo", &dead_addr)).await.unwrap();
    let _s = reg.register(endpoint("echo", &stalled_addr)).await.unwrap();
    let _d2 = reg.register(endpoint("down", &dead_addr)).await.unwrap();
    let _s2 = reg.register(endpoint("down", &stalled_addr)).await.unwrap();

    // One answers: success, with its round trip; the others' errors shown.
    let args = ["--zk", &hosts, "ping", "echo", "--timeout-ms", "500"];
    let run = rpcctl(&[&args[..], &["--json"]].concat()).await;
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    let doc = run.json();
    assert_eq!(doc["product"], "test");
    assert_eq!(doc["service"], "echo");
    assert_eq!(doc["answered"], 1);
    assert_eq!(doc["endpoints"].as_array().unwrap().len(), 3);
    let ok = outcome(&doc, &live_addr);
    assert!(ok["rtt_us"].as_u64().unwrap() < 500_000, "{ok}");
    assert!(ok["error"].is_null());
    assert_eq!(ok["service_id"], rpc_registry::service_id(&live_addr));
    let refused = outcome(&doc, &dead_addr);
    assert!(refused["rtt_us"].is_null());
    assert!(
        refused["error"].as_str().unwrap().starts_with("connect: "),
        "{refused}"
    );
    let silent = outcome(&doc, &stalled_addr);
    assert_eq!(silent["error"], "no echo within 500 ms");

    let run = rpcctl(&args).await;
    assert!(run.ok, "{}", run.stderr);
    let table = &run.stdout;
    assert!(table.starts_with("FRONTEND "), "{table}");
    let live_row = rows_with(table, &[&live_addr])[0];
    assert!(live_row.ends_with(" µs"), "{table}");
    assert!(
        rows_with(table, &[&dead_addr])[0].contains("error: connect: "),
        "{table}"
    );
    assert!(rows_with(table, &[&stalled_addr])[0].ends_with("error: no echo within 500 ms"));
    assert!(
        table.ends_with("1 of 3 endpoints of test/echo answered\n"),
        "{table}"
    );

    // None answers: non-zero, every error shown.
    let run = rpcctl(&[
        "--zk",
        &hosts,
        "ping",
        "down",
        "--timeout-ms",
        "300",
        "--json",
    ])
    .await;
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    let doc = run.json();
    assert_eq!(doc["answered"], 0);
    assert!(outcome(&doc, &dead_addr)["error"].is_string());
    assert_eq!(
        outcome(&doc, &stalled_addr)["error"],
        "no echo within 300 ms"
    );
    let run = rpcctl(&["--zk", &hosts, "ping", "down", "--timeout-ms", "300"]).await;
    assert_eq!(run.code, Some(1));
    assert!(
        run.stdout
            .ends_with("0 of 2 endpoints of test/down answered\n"),
        "{}",
        run.stdout
    );

    // Nothing registered: non-zero, and said why.
    let run = rpcctl(&["--zk", &hosts, "ping", "nobody"]).await;
    assert_eq!(run.code, Some(1));
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert!(
        run.stderr.contains("no endpoint of test/nobody"),
        "{}",
        run.stderr
    );

    live.kill().await;
}

/// The product comes from `--product`, else from the config file; a Unix
/// socket frontend is reached by its path.
#[tokio::test]
async fn local_registry_product_from_flag_or_config_and_unix_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("echo.sock");
    let live = TestEndpoint::start_on(&sock.to_str().unwrap().parse().unwrap(), "sock").await;
    let online = LocalRegistry::open(dir.path(), "online_x").unwrap();
    let sock_addr = sock.to_str().unwrap();
    let _r = online.register(endpoint("echo", sock_addr)).await.unwrap();
    let spec = format!("local:{}", dir.path().display());

    let run = rpcctl(&[
        "--zk",
        &spec,
        "ping",
        "echo",
        "--product",
        "online_x",
        "--json",
    ])
    .await;
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    let doc = run.json();
    assert_eq!(doc["product"], "online_x");
    assert!(outcome(&doc, sock_addr)["rtt_us"].is_u64(), "{doc}");

    let ini = dir.path().join("config.ini");
    std::fs::write(&ini, format!("zk = {spec}\nproduct = online_x\n")).unwrap();
    let run = rpcctl(&["-c", ini.to_str().unwrap(), "ping", "echo"]).await;
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    assert!(run
        .stdout
        .ends_with("1 of 1 endpoints of online_x/echo answered\n"));

    // The default product (test) has no such service.
    let run = rpcctl(&["--zk", &spec, "ping", "echo", "--json"]).await;
    assert_eq!(run.code, Some(1));
    assert_eq!(run.json()["endpoints"], serde_json::json!([]));

    live.kill().await;
}

/// `--proxy`: calls through a real proxy reach the service (its endpoint
/// refuses the unknown method, running nothing), or say what the proxy
/// answered instead.
#[tokio::test]
async fn through_a_proxy_calls_reach_the_service_or_say_why_not() {
    let stack = Stack::start("").await;
    let ep = TestEndpoint::start("a").await;
    let ep_addr = ep.address.to_string();
    let _r = stack
        .registry
        .register(endpoint("echo", &ep_addr))
        .await
        .unwrap();
    stack.routes("echo").await;
    let ini = stack.ini("cli.ini", &format!("proxy_address = {}", stack.address));
    let ini = ini.to_str().unwrap();

    // `--proxy` alone: the config's proxy.
    let run = rpcctl(&["-c", ini, "ping", "echo", "--proxy", "--json"]).await;
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    let doc = run.json();
    assert_eq!(doc["answered"], 1);
    let p = &doc["proxy"];
    assert_eq!(p["address"], stack.address.as_str());
    assert_eq!(
        (p["sent"].as_u64(), p["reached"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(p["rtt_us"].as_array().unwrap().len(), 3);
    assert!(p["error"].is_null(), "{p}");
    assert_eq!(ep.calls.load(std::sync::atomic::Ordering::SeqCst), 3);

    let args = [
        "-c",
        ini,
        "ping",
        "echo",
        "--proxy",
        &stack.address,
        "--count",
        "2",
    ];
    let run = rpcctl(&args).await;
    assert!(run.ok, "{}", run.stderr);
    let want = format!(
        "through the proxy at {}: 2 of 2 calls reached echo (min/avg/max ",
        stack.address
    );
    assert!(run.stdout.contains(&want), "{}", run.stdout);

    // A service the proxy does not know: its answer is shown, the run fails.
    let run = rpcctl(&["-c", ini, "ping", "nosuch", "--proxy", "--json"]).await;
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    let p = &run.json()["proxy"];
    assert_eq!(
        (p["sent"].as_u64(), p["reached"].as_u64()),
        (Some(1), Some(0))
    );
    assert!(p["error"].as_str().unwrap().contains("nosuch"), "{p}");

    // No proxy listening: a connect error.
    let dead = format!("127.0.0.1:{}", rpc_testkit::free_port());
    let run = rpcctl(&["-c", ini, "ping", "echo", "--proxy", &dead]).await;
    assert_eq!(run.code, Some(1));
    assert!(
        run.stdout.contains(&format!(
            "through the proxy at {dead}: 0 of 0 calls reached echo; error: connect: "
        )),
        "{}",
        run.stdout
    );
    ep.kill().await;
}

/// An endpoint that registered `"tls": true` accepts only TLS with a client
/// certificate: `ping` reaches it with a proxy's keys (from `-c` or the
/// `--tls-*` flags) and, without them, says what is missing; plain
/// endpoints of the same service are pinged plainly all along.
#[tokio::test]
async fn tls_endpoints_are_pinged_with_a_proxys_keys() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "fleet");
    let registry_dir = dir.path().join("registry");
    let registry = Arc::new(LocalRegistry::open(&registry_dir, "test").unwrap());
    let mut config = rpc_config::Config::parse(
        "service=echo\nfront_host=127.0.0.1\nfront_port=0\nquiet_period=0\n",
    )
    .unwrap();
    config.tls = ca.server("echo");
    let secure = rpc_sdk::Service::new(
        config,
        rpc_sdk::handler_fn(|_m: String, body: Bytes| async move { Ok::<_, String>(body) }),
    )
    .with_registry(registry.clone())
    .start()
    .await
    .expect("a TLS service starts");
    let secure_addr = secure.address().to_string();
    let plain = TestEndpoint::start("plain").await;
    let plain_addr = plain.address.to_string();
    let _r = registry
        .register(endpoint("echo", &plain_addr))
        .await
        .unwrap();
    let spec = format!("local:{}", registry_dir.display());

    // No keys: the TLS endpoint is not even dialled (one answer is
    // enough for success).
    let run = rpcctl(&["--zk", &spec, "ping", "echo", "--json"]).await;
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    let doc = run.json();
    assert!(outcome(&doc, &plain_addr)["rtt_us"].is_u64(), "{doc}");
    let err = outcome(&doc, &secure_addr)["error"].as_str().unwrap();
    assert!(
        err.contains("serves TLS only") && err.contains("tls_ca_file"),
        "{err}"
    );

    // A proxy's config.ini.
    let client = ca.client("rpcctl");
    let ini = dir.path().join("proxy.ini");
    std::fs::write(
        &ini,
        format!(
            "zk = {spec}\ntls_ca_file = {}\ntls_cert_file = {}\ntls_key_file = {}\n",
            client.ca.as_ref().unwrap().display(),
            client.cert.as_ref().unwrap().display(),
            client.key.as_ref().unwrap().display(),
        ),
    )
    .unwrap();
    let run = rpcctl(&["-c", ini.to_str().unwrap(), "ping", "echo", "--json"]).await;
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    let doc = run.json();
    assert_eq!(doc["answered"], 2, "{doc}");

    // The flags; a certificate of another CA is refused by the endpoint.
    let other = TestCa::new(dir.path(), "other").client("intruder");
    let path = |p: &Option<std::path::PathBuf>| p.as_ref().unwrap().to_str().unwrap().to_owned();
    let (ca_file, cert, key) = (path(&client.ca), path(&other.cert), path(&other.key));
    let run = rpcctl(&[
        "--zk",
        &spec,
        "ping",
        "echo",
        "--json",
        "--tls-ca",
        &ca_file,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ])
    .await;
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    let doc = run.json();
    assert!(outcome(&doc, &plain_addr)["rtt_us"].is_u64(), "{doc}");
    assert!(outcome(&doc, &secure_addr)["error"].is_string(), "{doc}");

    // A key file that is not there is an error up front.
    let run = rpcctl(&[
        "--zk",
        &spec,
        "ping",
        "echo",
        "--tls-ca",
        &ca_file,
        "--tls-cert",
        &cert,
        "--tls-key",
        "/nonexistent.pem",
    ])
    .await;
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("TLS client keys"), "{}", run.stderr);

    secure.stop().await;
    plain.kill().await;
}
