//! The dashboard's JSON API and page over the embedded registry, a scripted
//! endpoint (SPEC §4) and a scripted LB status page: quick, no ZooKeeper
//! and no browser needed.

mod common;

use std::time::{Duration, Instant};

use common::{endpoint, fleet_until, rate, start_dashboard, state};
use rpc_config::RegistrySpec;
use rpc_dashboard::Options;
use rpc_registry::local::LocalRegistry;
use rpc_registry::{Endpoint, Registry};
use rpc_testkit::endpoint::TestEndpoint;
use rpc_testkit::{free_port, http_get, STEP};
use serde_json::json;

/// An LB's status page answering 100 requests a second, one in twenty an
/// exception, all within 1 ms.
async fn scripted_lb_page() -> String {
    let start = Instant::now();
    let count = move || start.elapsed().as_millis() as u64 / 10;
    let app = axum::Router::new()
        .route(
            "/status",
            axum::routing::get(move || async move {
                let n = count();
                axum::Json(json!({
                    "service": "echo",
                    "registered": true,
                    "proxy_connections": 1,
                    "queue": {"length": 0, "limit": 100},
                    "requests": {"ok": n - n / 20, "exception": n / 20, "oneway": 0},
                    "latency": {"count": n, "mean_us": 400},
                    "workers": [{"state": "serving"}],
                }))
            }),
        )
        .route(
            "/metrics",
            axum::routing::get(move || async move {
                let n = count();
                format!(
                    "rpc_lb_request_duration_seconds_bucket{{le=\"0.001\"}} {n}\n\
                     rpc_lb_request_duration_seconds_bucket{{le=\"+Inf\"}} {n}\n"
                )
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn record(service: &str, frontend: &str) -> Endpoint {
    let mut e = Endpoint::new(service, frontend);
    e.deploy_path = "/srv/echo".into();
    e.code_url_version = "git@git.example.com:team/echo.git@1a2b3c4".into();
    e
}

#[tokio::test]
async fn the_api_follows_registry_endpoints_and_status_pages() {
    let dir = tempfile::tempdir().unwrap();
    let registry = LocalRegistry::open(dir.path(), "test").unwrap();
    let live = TestEndpoint::start("live").await;
    let live_at = live.address.to_string();
    let dead_at = format!("127.0.0.1:{}", free_port());
    let live_reg = registry.register(record("echo", &live_at)).await.unwrap();
    let _dead_reg = registry.register(record("echo", &dead_at)).await.unwrap();

    let page = scripted_lb_page().await;
    let nobody = format!("127.0.0.1:{}", free_port());
    let mut options = Options::new(RegistrySpec::Local(dir.path().to_path_buf()));
    options.refresh = Duration::from_millis(200);
    options.probe_timeout = Duration::from_millis(500);
    options.status_pages = vec![format!("http://{page}/"), nobody.clone()];
    let (dash, _task) = start_dashboard(options).await;

    let f = fleet_until(
        dash,
        "both endpoints judged and traffic counted",
        STEP,
        |f| {
            state(f, "test", "echo", &live_at).as_deref() == Some("up")
                && state(f, "test", "echo", &dead_at).as_deref() == Some("down")
                && rate(f, &page, "echo").is_some_and(|r| r > 0.0)
        },
    )
    .await;
    assert_eq!(f["registry"], format!("local:{}", dir.path().display()));
    assert_eq!(f["refresh_ms"], 200);
    let live_ep = endpoint(&f, "test", "echo", &live_at).unwrap();
    assert_eq!(live_ep["service_id"], rpc_registry::service_id(&live_at));
    assert_eq!(live_ep["deploy_path"], "/srv/echo");
    assert_eq!(live_ep["start_time"].as_str().unwrap().len(), 19);
    assert_eq!(
        live_ep["code_link"],
        "https://git.example.com/team/echo/commit/1a2b3c4"
    );
    assert!(live_ep["rtt_us"].as_u64().is_some(), "{live_ep}");
    let dead_ep = endpoint(&f, "test", "echo", &dead_at).unwrap();
    assert!(
        dead_ep["error"].as_str().unwrap().starts_with("connect:"),
        "{dead_ep}"
    );

    // The scripted page: about 100 requests a second, 5 % errors, p99 under 1 ms.
    let samples = f["traffic"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["source"] == page.as_str() && t["service"] == "echo")
        .unwrap()["samples"]
        .as_array()
        .unwrap()
        .clone();
    let last = samples.last().unwrap();
    let r = last["rate"].as_f64().unwrap();
    assert!((40.0..250.0).contains(&r), "rate {r}");
    let p99 = last["p99_ms"].as_f64().unwrap();
    assert!(p99 > 0.0 && p99 <= 1.0, "p99 {p99}");
    let sources = f["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 2);
    assert_eq!(
        (
            &sources[0]["address"],
            &sources[0]["kind"],
            &sources[0]["reachable"]
        ),
        (&json!(page), &json!("lb"), &json!(true))
    );
    assert_eq!(sources[1]["address"], nobody.as_str());
    assert_eq!(sources[1]["reachable"], false);
    let errors = fleet_until(dash, "an error rate", STEP, |f| {
        f["traffic"][0]["samples"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["error_rate"].as_f64() > Some(0.0)))
    })
    .await;
    let e = errors["traffic"][0]["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["error_rate"].as_f64())
        .fold(0.0, f64::max);
    assert!(e <= 0.2, "error rate {e}");

    // Leaving the registry while still answering: draining; then gone.
    live_reg.deregister().await;
    fleet_until(dash, "the endpoint draining", STEP, |f| {
        state(f, "test", "echo", &live_at).as_deref() == Some("draining")
    })
    .await;
    live.kill().await;
    let f = fleet_until(dash, "the endpoint gone", STEP, |f| {
        state(f, "test", "echo", &live_at).as_deref() == Some("gone")
    })
    .await;
    assert!(endpoint(&f, "test", "echo", &live_at).unwrap()["left_ms"]
        .as_u64()
        .is_some());

    // The page is one document that asks the API.
    let html = http_get(dash, "/").await;
    assert!(html.starts_with("<!doctype html>"), "{html:.100}");
    assert!(html.contains("fetch(\"api/fleet\""));
    for outside in [" src=", "<link", "@import", "url("] {
        assert!(
            !html.contains(outside),
            "the page loads nothing else ({outside})"
        );
    }
}

#[tokio::test]
async fn an_unreadable_registry_is_reported_and_keeps_the_page_up() {
    // A ZooKeeper address nobody listens on.
    let hosts = format!("127.0.0.1:{}", free_port());
    let mut options = Options::new(RegistrySpec::ZooKeeper(hosts.clone()));
    options.refresh = Duration::from_millis(200);
    options.registry_timeout = Duration::from_millis(300);
    let (dash, _task) = start_dashboard(options).await;
    let f = fleet_until(dash, "the registry error", STEP, |f| {
        f["registry_error"].is_string()
    })
    .await;
    assert_eq!(f["registry"], hosts);
    assert_eq!(f["products"], json!([]));
    assert!(http_get(dash, "/").await.contains("<script>"));
}
