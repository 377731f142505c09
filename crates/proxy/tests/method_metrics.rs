//! Calls per service and method (SPEC §8) on the proxy's `/metrics`,
//! driven through a real proxy to a real endpoint and scraped over HTTP.

mod common;

use std::sync::Arc;

use common::*;
use rpc_codec::MessageType;
use rpc_testkit::http_get;

fn assert_lines(text: &str, lines: &[&str]) {
    for line in lines {
        assert!(
            text.lines().any(|l| l == *line),
            "{line} missing from:\n{text}"
        );
    }
}

/// The `method` labels of the per-method call counters, in order.
fn methods_listed(text: &str) -> Vec<String> {
    let mut out: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("rpc_proxy_method_requests_total{"))
        .filter_map(|l| l.split("method=\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .map(String::from)
        .collect();
    out.dedup();
    out
}

#[tokio::test]
async fn calls_are_counted_per_method_with_latency_histograms() {
    let ep = TestEndpoint::start("a").await;
    let reg = MemRegistry::new();
    reg.set("echo", vec![ep.endpoint("echo")]);
    let config = test_config("metrics_address=127.0.0.1:0\nrpc_timeout=1\nmetrics_max_methods=3");
    let (proxy, addr) = start_proxy(&config, Arc::new(reg)).await;
    let metrics = proxy.metrics_address().expect("metrics enabled");
    let mut c = Client::connect(&addr).await;

    for i in 0..5 {
        let r = c.call("echo:echo", i, b"x").await;
        assert_eq!(r.kind(), MessageType::Reply);
    }
    // A name from a client is made a safe label; the endpoint does not
    // know the method and answers with its own exception.
    let r = c.call("echo:we\"ird}", 10, b"").await;
    assert_eq!(r.kind(), MessageType::Exception);
    // 300 ms at the endpoint.
    for i in 20..22 {
        assert_eq!(c.call("echo:slow", i, b"").await.kind(), MessageType::Reply);
    }
    // Past three methods: counted together as `other`.
    c.send(MessageType::Oneway, "echo:note", 30, b"").await;
    let (_, text) = exception_text(&c.call("echo:hang", 31, b"").await);
    assert!(text.contains("Timeout"), "{text}");
    assert_eq!(
        c.call("echo:nope", 32, b"").await.kind(),
        MessageType::Exception
    );
    // Unknown services are not counted per method (any name would do).
    assert_eq!(
        c.call("nosuch:x", 40, b"").await.kind(),
        MessageType::Exception
    );

    let text = http_get(metrics, "/metrics").await;
    let count = |m: &str, outcome: &str, n: u64| {
        format!("rpc_proxy_method_requests_total{{service=\"echo\",method=\"{m}\",outcome=\"{outcome}\"}} {n}")
    };
    let lat = |suffix: &str, le: Option<&str>, m: &str, n: u64| {
        match le {
        Some(le) => format!(
            "rpc_proxy_method_latency_seconds_{suffix}{{le=\"{le}\",service=\"echo\",method=\"{m}\"}} {n}"
        ),
        None => format!(
            "rpc_proxy_method_latency_seconds_{suffix}{{service=\"echo\",method=\"{m}\"}} {n}"
        ),
    }
    };
    let expected = [
        count("echo", "ok", 5),
        count("echo", "exception", 0),
        count("echo", "timeout", 0),
        lat("count", None, "echo", 5),
        lat("bucket", Some("0.25"), "echo", 5),
        count("we_ird_", "exception", 1),
        lat("count", None, "we_ird_", 1),
        count("slow", "ok", 2),
        lat("bucket", Some("0.25"), "slow", 0),
        lat("bucket", Some("1.0"), "slow", 2),
        lat("count", None, "slow", 2),
        count("other", "oneway", 1),
        count("other", "timeout", 1),
        count("other", "exception", 1),
        count("other", "ok", 0),
        // The oneway call has no latency.
        lat("count", None, "other", 2),
        lat("bucket", Some("0.5"), "other", 1),
        lat("bucket", Some("+Inf"), "other", 2),
    ];
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    assert_lines(&text, &expected);
    assert_eq!(methods_listed(&text), ["echo", "other", "slow", "we_ird_"]);
    assert!(!text.contains("nosuch"), "{text}");
    // Per service, what the proxy already counted.
    assert_lines(&text, &["rpc_proxy_requests_total{service=\"echo\"} 11"]);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_falcon_agent_that_is_down_changes_nothing_for_clients() {
    let ep = TestEndpoint::start("a").await;
    let reg = MemRegistry::new();
    reg.set("echo", vec![ep.endpoint("echo")]);
    // Nothing listens there; pushes fail every 50 ms.
    let port = rpc_testkit::free_port();
    let config = test_config(&format!(
        "falcon_client=http://127.0.0.1:{port}/v1/push\nfalcon_interval=0.05\n\
         metrics_address=127.0.0.1:0"
    ));
    let (proxy, addr) = start_proxy(&config, Arc::new(reg.clone())).await;
    let mut c = Client::connect(&addr).await;
    let started = tokio::time::Instant::now();
    let mut i = 0;
    while started.elapsed() < std::time::Duration::from_millis(400) {
        assert_eq!(
            c.call("echo:echo", i, b"x").await.kind(),
            MessageType::Reply
        );
        i += 1;
    }
    let text = http_get(proxy.metrics_address().unwrap(), "/metrics").await;
    let line = format!(
        "rpc_proxy_method_requests_total{{service=\"echo\",method=\"echo\",outcome=\"ok\"}} {i}"
    );
    assert_lines(&text, &[&line]);
    proxy.shutdown().await;

    // A URL the proxy cannot use: logged, and the proxy serves regardless.
    let config = test_config("falcon_client=https://agent/v1/push");
    let (proxy, addr) = start_proxy(&config, Arc::new(reg)).await;
    let mut c = Client::connect(&addr).await;
    assert_eq!(
        c.call("echo:echo", 1, b"x").await.kind(),
        MessageType::Reply
    );
    proxy.shutdown().await;
}
