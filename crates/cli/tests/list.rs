//! `rpcctl list` against a real ZooKeeper and against the embedded
//! directory registry, with endpoints registered the way services do.

mod common;

use std::time::Duration;

use common::{endpoint, rows_with, rpcctl, rpcctl_env};
use rpc_registry::local::LocalRegistry;
use rpc_registry::zk::ZkRegistry;
use rpc_registry::Registry;
use rpc_testkit::ZkServer;
use serde_json::{json, Value};

const SESSION: Duration = Duration::from_secs(5);

/// The endpoints of `service` in `product` of a `--json` listing.
fn endpoints<'a>(doc: &'a Value, product: &str, service: &str) -> &'a Vec<Value> {
    let p = doc["products"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["product"] == product)
        .unwrap_or_else(|| panic!("no product {product} in {doc}"));
    let s = p["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == service)
        .unwrap_or_else(|| panic!("no service {service} in {doc}"));
    s["endpoints"].as_array().unwrap()
}

/// `doc` without the `started_ago_s` fields, which change between runs.
fn without_ages(doc: &Value) -> Value {
    match doc {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| *k != "started_ago_s")
                .map(|(k, v)| (k.clone(), without_ages(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_ages).collect()),
        v => v.clone(),
    }
}

/// An endpoint of the listing carries its record exactly as registered,
/// a start moments ago, and no drain mark.
fn assert_record(listed: &Value, registered: &rpc_registry::Endpoint) {
    let mut record = listed.clone();
    let fields = record.as_object_mut().unwrap();
    assert_eq!(fields.remove("draining"), Some(Value::Bool(false)));
    let ago = fields.remove("started_ago_s").expect("started_ago_s");
    assert_eq!(record, serde_json::to_value(registered).unwrap());
    let ago = ago.as_i64().expect("a readable start time");
    assert!((0..60).contains(&ago), "started {ago} s ago");
}

#[tokio::test]
async fn zookeeper_every_product_service_and_endpoint() {
    let zk = ZkServer::start();
    let hosts = zk.hosts();
    let test = ZkRegistry::connect(&hosts, "test", SESSION).await.unwrap();
    let online = ZkRegistry::connect(&hosts, "online_x", SESSION)
        .await
        .unwrap();
    let (a, b) = (
        endpoint("echo", "127.0.0.1:5555"),
        endpoint("echo", "127.0.0.1:5556"),
    );
    let o = endpoint("search", "10.0.0.7:7000");
    let _b = test.register(b.clone()).await.unwrap();
    let _a = test.register(a.clone()).await.unwrap();
    let _o = online.register(o.clone()).await.unwrap();
    // A service whose only endpoint left: still listed, without endpoints.
    test.register(endpoint("gone", "127.0.0.1:5557"))
        .await
        .unwrap()
        .deregister()
        .await;

    let run = rpcctl(&["--zk", &hosts, "list", "--json"]).await;
    assert!(run.ok, "{}", run.stderr);
    let doc = run.json();
    assert_eq!(doc["registry"], hosts);
    let products: Vec<&Value> = doc["products"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["product"])
        .collect();
    assert_eq!(products, ["online_x", "test"]);
    let echo = endpoints(&doc, "test", "echo");
    assert_eq!(echo.len(), 2);
    assert_record(&echo[0], &a);
    assert_record(&echo[1], &b);
    assert_record(&endpoints(&doc, "online_x", "search")[0], &o);
    assert!(endpoints(&doc, "test", "gone").is_empty());

    // The table: a header, one aligned line per endpoint, every field.
    let run = rpcctl(&["--zk", &hosts, "list"]).await;
    assert!(run.ok, "{}", run.stderr);
    let table = run.stdout;
    let header = table.lines().next().unwrap();
    for column in [
        "PRODUCT",
        "SERVICE",
        "FRONTEND",
        "SERVICE_ID",
        "DRAINING",
        "HOSTNAME",
        "START_TIME",
        "STARTED",
        "DEPLOY_PATH",
        "CODE_URL_VERSION",
    ] {
        assert!(header.split_whitespace().any(|h| h == column), "{header}");
    }
    let row = rows_with(
        &table,
        &[
            "test",
            "echo",
            "127.0.0.1:5555",
            "127_0_0_1_5555",
            "no",
            &a.hostname,
            &a.start_time,
            "/srv/echo",
            "git@host:team/echo.git@1a2b3c4",
        ],
    );
    assert_eq!(row.len(), 1, "{table}");
    assert!(row[0].contains("s ago"), "{table}");
    let start_col = header.find("START_TIME").unwrap();
    assert_eq!(
        row[0].find(&a.start_time),
        Some(start_col),
        "aligned:\n{table}"
    );
    assert_eq!(
        rows_with(&table, &["online_x", "search", "10.0.0.7:7000"]).len(),
        1
    );
    assert_eq!(
        rows_with(&table, &["test", "gone", "(no endpoints)"]).len(),
        1
    );
    assert_eq!(table.lines().count(), 5, "{table}");

    // One product, then one service of it.
    let run = rpcctl(&["--zk", &hosts, "list", "test", "--json"]).await;
    let doc = run.json();
    assert_eq!(doc["products"].as_array().unwrap().len(), 1);
    assert_eq!(endpoints(&doc, "test", "echo").len(), 2);
    let run = rpcctl(&["--zk", &hosts, "list", "online_x", "search", "--json"]).await;
    let doc = run.json();
    assert_eq!(doc["products"][0]["services"].as_array().unwrap().len(), 1);
    assert_record(&endpoints(&doc, "online_x", "search")[0], &o);

    // A product nobody registered in is empty, and reading it creates nothing.
    let run = rpcctl(&["--zk", &hosts, "list", "nope", "--json"]).await;
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(
        run.json()["products"],
        json!([{"product": "nope", "services": []}])
    );
    let run = rpcctl(&["--zk", &hosts, "list", "--json"]).await;
    assert_eq!(run.json()["products"].as_array().unwrap().len(), 2);

    // The registry named by a config file's `zk` key.
    let dir = tempfile::tempdir().unwrap();
    let ini = dir.path().join("config.ini");
    std::fs::write(&ini, format!("zk = {hosts}\nproduct = online_x\n")).unwrap();
    let run = rpcctl(&["-c", ini.to_str().unwrap(), "list", "online_x", "--json"]).await;
    assert!(run.ok, "{}", run.stderr);
    assert_record(&endpoints(&run.json(), "online_x", "search")[0], &o);
}

#[tokio::test]
async fn zookeeper_that_does_not_answer_is_an_error() {
    let port = rpc_testkit::free_port();
    let dir = tempfile::tempdir().unwrap();
    let ini = dir.path().join("config.ini");
    // A short session timeout bounds the wait.
    std::fs::write(
        &ini,
        format!("zk = 127.0.0.1:{port}\nzk_session_timeout = 1\n"),
    )
    .unwrap();
    let run = rpcctl(&["-c", ini.to_str().unwrap(), "list"]).await;
    assert_eq!(run.code, Some(1));
    assert!(run.stdout.is_empty());
    assert!(
        run.stderr.contains(&format!("127.0.0.1:{port}")),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn local_registry_by_flag_by_config_and_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let test = LocalRegistry::open(dir.path(), "test").unwrap();
    let online = LocalRegistry::open(dir.path(), "online_x").unwrap();
    let a = endpoint("echo", "127.0.0.1:5555");
    let s = endpoint("echo", "/run/echo.sock");
    let o = endpoint("search", "10.0.0.7:7000");
    let _a = test.register(a.clone()).await.unwrap();
    let _s = test.register(s.clone()).await.unwrap();
    let _o = online.register(o.clone()).await.unwrap();
    let spec = format!("local:{}", dir.path().display());

    let run = rpcctl(&["--zk", &spec, "list", "--json"]).await;
    assert!(run.ok, "{}", run.stderr);
    let doc = run.json();
    assert_eq!(doc["registry"], spec);
    let echo = endpoints(&doc, "test", "echo");
    // Sorted by service_id: "127_0_0_1_5555" < "runecho_sock".
    assert_record(&echo[0], &a);
    assert_record(&echo[1], &s);
    assert_record(&endpoints(&doc, "online_x", "search")[0], &o);

    let run = rpcctl(&["--zk", &spec, "list", "test"]).await;
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(
        rows_with(&run.stdout, &["test", "echo", "/run/echo.sock"]).len(),
        1
    );
    assert!(!run.stdout.contains("online_x"), "{}", run.stdout);

    // `zk = local:DIR` in a config file.
    let ini = dir.path().join("config.ini");
    std::fs::write(&ini, format!("zk = {spec}\n")).unwrap();
    let run = rpcctl(&["-c", ini.to_str().unwrap(), "list", "--json"]).await;
    assert_eq!(without_ages(&run.json()), without_ages(&doc));

    // Neither: the embedded registry's default directory, as the other
    // binaries pick it.
    let run = rpcctl_env(
        &["list", "--json"],
        &[("RPC_REGISTRY_DIR", dir.path().to_str().unwrap())],
    )
    .await;
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(without_ages(&run.json()), without_ages(&doc));
}

#[tokio::test]
async fn empty_registry_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let spec = format!("local:{}", dir.path().display());
    let run = rpcctl(&["--zk", &spec, "list"]).await;
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(run.stdout, format!("nothing registered in {spec}\n"));
    let run = rpcctl(&["--zk", &spec, "list", "--json"]).await;
    assert_eq!(run.json(), json!({"registry": spec, "products": []}));
}
