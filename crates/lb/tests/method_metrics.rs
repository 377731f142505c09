//! Calls per method (SPEC §8): the LB's `/metrics`, the proxy's and the
//! LB's together on one path (client → proxy → LB → workers), and the
//! open-falcon push of both, received by a small HTTP server in the test.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use rpc_codec::MessageType;
use rpc_testkit::http_get;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

fn assert_lines(text: &str, lines: &[String]) {
    for line in lines {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from:\n{text}"
        );
    }
}

/// `{prefix}_method_requests_total` of service `echo`'s `method`.
fn calls(prefix: &str, method: &str, outcome: &str, n: u64) -> String {
    format!(
        "{prefix}_method_requests_total{{service=\"echo\",method=\"{method}\",outcome=\"{outcome}\"}} {n}"
    )
}

/// `{prefix}_method_latency_seconds_count` of service `echo`'s `method`.
fn timed(prefix: &str, method: &str, n: u64) -> String {
    format!("{prefix}_method_latency_seconds_count{{service=\"echo\",method=\"{method}\"}} {n}")
}

#[tokio::test]
async fn lb_counts_calls_per_method_with_latency_histograms() {
    let (lb, _reg) = start_lb(
        "metrics_address=127.0.0.1:0\nworker_pool_size=2\nmetrics_max_methods=2\nrpc_timeout=0.5",
    )
    .await;
    let addr = lb.metrics_address().expect("metrics enabled");
    let w = workers(&lb, &["a"], 2).await;
    let mut c = Client::connect(lb.front_address()).await;
    for i in 0..3 {
        assert_eq!(c.call("echo", i, b"x").await.kind(), MessageType::Reply);
    }
    // A multiplexed name is counted under the bare method.
    for i in 3..5 {
        assert_eq!(
            c.call("echo:echo", i, b"x").await.kind(),
            MessageType::Reply
        );
    }
    c.send(MessageType::Oneway, "echo", 5, b"one way").await;
    // The worker's own exception.
    assert_eq!(c.call("nope", 6, b"").await.kind(), MessageType::Exception);
    // Beyond two methods: `other`.
    assert_eq!(c.call("tag", 7, b"").await.kind(), MessageType::Reply);
    let r = c.call("block", 8, b"").await;
    assert_eq!(r.kind(), MessageType::Exception, "timed out at the worker");

    let text = http_get(addr, "/metrics").await;
    let p = "rpc_lb";
    assert_lines(
        &text,
        &[
            calls(p, "echo", "ok", 5),
            calls(p, "echo", "oneway", 1),
            calls(p, "echo", "timeout", 0),
            timed(p, "echo", 5),
            format!("{p}_method_latency_seconds_bucket{{le=\"0.25\",service=\"echo\",method=\"echo\"}} 5"),
            calls(p, "nope", "exception", 1),
            timed(p, "nope", 1),
            calls(p, "other", "ok", 1),
            calls(p, "other", "timeout", 1),
            timed(p, "other", 2),
            // The timed-out call waited its whole deadline.
            format!("{p}_method_latency_seconds_bucket{{le=\"0.25\",service=\"echo\",method=\"other\"}} 1"),
            format!("{p}_method_latency_seconds_bucket{{le=\"1.0\",service=\"echo\",method=\"other\"}} 2"),
        ],
    );
    assert!(!text.contains("method=\"tag\""), "{text}");
    w[0].release(1);
    lb.stop().await;
}

/// An open-falcon agent's push API: every POST's request line, content
/// type and JSON body, answered `success`.
struct FalconAgent {
    url: String,
    pushes: mpsc::UnboundedReceiver<(String, String, Value)>,
}

impl FalconAgent {
    async fn start() -> FalconAgent {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/push", l.local_addr().unwrap());
        let (tx, pushes) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut s = BufReader::new(s);
                    let (mut request, mut line) = (String::new(), String::new());
                    s.read_line(&mut request).await.unwrap();
                    let (mut length, mut content_type) = (0, String::new());
                    loop {
                        line.clear();
                        s.read_line(&mut line).await.unwrap();
                        let Some((k, v)) = line.trim_end().split_once(": ") else {
                            break;
                        };
                        match k.to_ascii_lowercase().as_str() {
                            "content-length" => length = v.parse().unwrap(),
                            "content-type" => content_type = v.to_string(),
                            _ => {}
                        }
                    }
                    let mut body = vec![0; length];
                    s.read_exact(&mut body).await.unwrap();
                    let ok =
                        "HTTP/1.1 200 OK\r\ncontent-length: 7\r\nconnection: close\r\n\r\nsuccess";
                    s.write_all(ok.as_bytes()).await.unwrap();
                    let body = serde_json::from_slice(&body).expect("a JSON body");
                    let _ = tx.send((request.trim_end().to_string(), content_type, body));
                });
            }
        });
        FalconAgent { url, pushes }
    }

    /// Items pushed until each metric's values add up to its total (each
    /// push holds one interval; a series of calls may span two).
    async fn until_totals(&mut self, totals: &[(&str, u64)]) -> Vec<Value> {
        let mut items = Vec::new();
        let sum = |items: &[Value], metric: &str| -> u64 {
            let of_metric = items.iter().filter(|i| i["metric"] == metric);
            of_metric.map(|i| i["value"].as_u64().unwrap()).sum()
        };
        while totals.iter().any(|&(m, total)| sum(&items, m) < total) {
            let (request, content_type, body) = tokio::time::timeout(STEP, self.pushes.recv())
                .await
                .unwrap_or_else(|_| panic!("pushed so far: {items:?}"))
                .unwrap();
            assert_eq!(request, "POST /v1/push HTTP/1.1");
            assert_eq!(content_type, "application/json");
            items.extend(body.as_array().expect("a JSON array").iter().cloned());
        }
        for &(metric, total) in totals {
            assert_eq!(sum(&items, metric), total, "{metric}: {items:?}");
        }
        items
    }
}

/// Every item has exactly the fields of the agent's push API.
fn assert_shape(items: &[Value]) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for i in items {
        let mut keys: Vec<_> = i.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "counterType",
                "endpoint",
                "metric",
                "step",
                "tags",
                "timestamp",
                "value"
            ]
        );
        assert!(!i["endpoint"].as_str().unwrap().is_empty(), "{i}");
        assert_eq!(
            (&i["counterType"], &i["step"], &i["tags"]),
            (&"GAUGE".into(), &1.into(), &"".into())
        );
        let ts = i["timestamp"].as_u64().unwrap();
        assert!(ts.abs_diff(now) < 60, "{i}");
    }
}

/// The mean of `metric`'s values (ms).
fn mean(items: &[Value], metric: &str) -> f64 {
    let values: Vec<f64> = items
        .iter()
        .filter(|i| i["metric"] == metric)
        .map(|i| i["value"].as_f64().unwrap())
        .collect();
    assert!(!values.is_empty(), "no {metric} in {items:?}");
    values.iter().sum::<f64>() / values.len() as f64
}

#[tokio::test]
async fn proxy_and_lb_count_the_same_calls_and_push_them_to_falcon() {
    let mut lb_agent = FalconAgent::start().await;
    let mut proxy_agent = FalconAgent::start().await;
    let push = |agent: &FalconAgent| format!("falcon_client={}\nfalcon_interval=0.3\n", agent.url);
    let (lb, reg) = start_lb(&format!(
        "metrics_address=127.0.0.1:0\nworker_pool_size=4\n{}",
        push(&lb_agent)
    ))
    .await;
    let _w = workers(&lb, &["a", "b"], 4).await;
    eventually("LB registered", || reg.endpoints("echo").len() == 1).await;
    let mut config = rpc_config::Config::parse(&format!(
        "metrics_address=127.0.0.1:0\n{}",
        push(&proxy_agent)
    ))
    .unwrap();
    config.proxy_address = vec!["127.0.0.1:0".parse().unwrap()];
    let proxy = rpc_proxy::start(&config, Arc::new(reg.clone()))
        .await
        .expect("proxy starts");
    let mut c = Client::connect(&proxy.addresses()[0]).await;
    const N: u64 = 40;
    for i in 0..N as i32 {
        c.send(MessageType::Call, "echo:echo", i, b"x").await;
    }
    assert_eq!(c.recv_n(N as usize).await.len(), N as usize);
    // 100 ms at the worker.
    for i in 0..2 {
        assert_eq!(
            c.call("echo:slow", 100 + i, b"").await.kind(),
            MessageType::Reply
        );
    }

    for (prefix, page) in [
        ("rpc_proxy", proxy.metrics_address().unwrap()),
        ("rpc_lb", lb.metrics_address().unwrap()),
    ] {
        let text = http_get(page, "/metrics").await;
        let lines = [
            calls(prefix, "echo", "ok", N),
            timed(prefix, "echo", N),
            calls(prefix, "slow", "ok", 2),
            timed(prefix, "slow", 2),
        ];
        assert_lines(&text, &lines);
    }

    for agent in [&mut proxy_agent, &mut lb_agent] {
        let totals = [("echo.echo.calls", N), ("echo.slow.calls", 2)];
        let items = agent.until_totals(&totals).await;
        assert_shape(&items);
        // Every push names only what was called in its interval.
        let names = [
            "echo.echo.calls",
            "echo.echo.avgrt",
            "echo.slow.calls",
            "echo.slow.avgrt",
        ];
        assert!(
            items
                .iter()
                .all(|i| names.contains(&i["metric"].as_str().unwrap())),
            "{items:?}"
        );
        let slow = mean(&items, "echo.slow.avgrt");
        assert!((90.0..2000.0).contains(&slow), "slow avgrt {slow} ms");
        let echo = mean(&items, "echo.echo.avgrt");
        assert!((0.0..1000.0).contains(&echo), "echo avgrt {echo} ms");
    }
    // Intervals without calls push nothing.
    tokio::time::sleep(Duration::from_millis(700)).await;
    for agent in [&mut proxy_agent, &mut lb_agent] {
        assert!(agent.pushes.try_recv().is_err(), "a push without calls");
    }
    proxy.shutdown().await;
    lb.stop().await;
}
