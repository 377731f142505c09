//! The metrics endpoint and dashboard, scraped over real HTTP.

mod common;

use std::sync::Arc;

use common::*;
use rpc_codec::MessageType;
use rpc_testkit::http_get as get;

#[tokio::test]
async fn metrics_status_and_dashboard_show_traffic_and_endpoints() {
    let ep = TestEndpoint::start("a").await;
    let reg = MemRegistry::new();
    reg.set("echo", vec![ep.endpoint("echo")]);
    let config = test_config("metrics_address=127.0.0.1:0\nrpc_timeout=0.3");
    let (proxy, addr) = start_proxy(&config, Arc::new(reg)).await;
    let metrics = proxy.metrics_address().expect("metrics enabled");

    let mut c = Client::connect(&addr).await;
    for i in 0..5 {
        assert_eq!(
            c.call("echo:echo", i, b"x").await.kind(),
            MessageType::Reply
        );
    }
    assert_eq!(
        c.call("nosuch:echo", 9, b"").await.kind(),
        MessageType::Exception
    );
    assert_eq!(
        c.call("echo:hang", 10, b"").await.kind(),
        MessageType::Exception
    );

    let text = get(metrics, "/metrics").await;
    let endpoint = ep.address.to_string();
    for line in [
        "rpc_proxy_requests_total{service=\"echo\"} 6".to_string(),
        "rpc_proxy_errors_total{kind=\"unknown_service\"} 1".to_string(),
        "rpc_proxy_errors_total{kind=\"timeout\"} 1".to_string(),
        "rpc_proxy_connections_open 1".to_string(),
        format!("rpc_proxy_endpoint_up{{service=\"echo\",endpoint=\"{endpoint}\"}} 1"),
    ] {
        assert!(text.contains(&line), "{line} missing from:\n{text}");
    }
    let status = get(metrics, "/status").await;
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["endpoints"][0]["service"], "echo");
    assert_eq!(v["endpoints"][0]["state"], "Up");
    let page = get(metrics, "/").await;
    assert!(page.contains(&endpoint) && page.contains("echo"), "{page}");
    assert!(
        page.contains("rpc-proxy ") && page.contains(" · up "),
        "{page}"
    );
    assert_eq!(v["about"]["program"], "rpc-proxy");
    assert!(v["about"]["settings"]["rpc_timeout"].is_string(), "{v}");

    // Rates are taken between two looks at the page.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    for i in 20..30 {
        assert_eq!(
            c.call("echo:echo", i, b"x").await.kind(),
            MessageType::Reply
        );
    }
    let v: serde_json::Value = serde_json::from_str(&get(metrics, "/status").await).unwrap();
    let echo = &v["traffic"][0];
    assert_eq!(echo["service"], "echo", "{v}");
    assert!(echo["requests_per_s"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(echo["errors_per_s"].as_f64(), Some(0.0), "{v}");
    assert!(echo["p99_ms_at_most"].as_f64().is_some(), "{v}");
    assert!(get(metrics, "/").await.contains("Traffic, last seconds"));
}
