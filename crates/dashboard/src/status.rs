//! Reading the status pages of proxies and LBs (`metrics_address`): their
//! `/status` JSON says what they are and, for a proxy, how it sees each
//! endpoint; their `/metrics` text holds the counters and the latency
//! histogram the traffic series are computed from.
//!
//! - An LB (`/status` has `service` and `requests`): one series for its
//!   service. Requests are the sum of every outcome, errors every outcome
//!   but `ok` and `oneway`, p99 from `rpc_lb_request_duration_seconds`.
//! - A proxy (`/status` has `endpoints`): one series per service. Where
//!   the page counts calls by service and method
//!   (`rpc_proxy_method_requests_total{service,method,outcome}` and the
//!   `rpc_proxy_method_latency_seconds{service,method}` histogram), those
//!   give each service's requests, errors (every outcome but `ok` and
//!   `oneway`) and p99. Otherwise requests come from
//!   `rpc_proxy_requests_total{service}`, and the error replies, counted
//!   by kind only, make the error rate of the proxy's total series
//!   (service `""`, whose requests include the calls to unknown services,
//!   which no service counts). The latency shown beside is the highest of
//!   the balancer's estimates for the service's endpoints.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout_at, Instant};

use crate::prom::{self, Line};
use crate::series::Reading;

/// Most bytes read from one status page answer.
const MAX_BODY: usize = 8 << 20;

/// What a status page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Proxy,
    Lb,
    /// Not read yet, or not recognised.
    Unknown,
}

/// How a proxy sees one endpoint, from its `/status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProxyView {
    /// The status page it came from.
    pub source: String,
    pub service: String,
    pub endpoint: String,
    /// The proxy's connection state (`Up`, `Down`, ...).
    pub state: String,
    pub outstanding: u64,
    pub latency_us: u64,
    /// An operator drained the endpoint (`rpcctl drain`): the proxy sends
    /// it no new calls. False where the page does not say.
    pub draining: bool,
}

/// One read of one status page.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub kind: Kind,
    /// One line about the whole process (connections, workers, queue).
    pub summary: String,
    /// Counters by service; `""` is a proxy's total.
    pub readings: BTreeMap<String, Reading>,
    /// A proxy's view of its endpoints.
    pub endpoints: Vec<ProxyView>,
}

/// `host:port` of a status page as an operator may write it
/// (`http://host:port/` too).
pub fn normalize(address: &str) -> String {
    let a = address.trim();
    let a = a.strip_prefix("http://").unwrap_or(a).trim_end_matches('/');
    a.to_string()
}

/// Reads `/status` and `/metrics` of the page at `address`, both within
/// `limit`. The readings are stamped when the answers are in, the moment
/// the counters were read (give or take the answer's way back), so a slow
/// read does not skew the rates.
pub async fn read(address: &str, limit: Duration) -> Result<Page, String> {
    let deadline = Instant::now() + limit;
    let (status, metrics) = tokio::join!(
        get(address, "/status", deadline),
        get(address, "/metrics", deadline)
    );
    let now_ms = crate::fleet::unix_ms();
    let status: Value =
        serde_json::from_str(&status?).map_err(|e| format!("/status is not JSON: {e}"))?;
    let metrics = prom::parse(&metrics?);
    interpret(address, &status, &metrics, now_ms)
}

/// What `status` and `metrics` say, by the kind of page they come from.
pub fn interpret(
    address: &str,
    status: &Value,
    metrics: &[Line],
    now_ms: u64,
) -> Result<Page, String> {
    if status.get("requests").is_some() && status.get("service").is_some() {
        Ok(lb_page(status, metrics, now_ms))
    } else if status.get("endpoints").is_some() {
        Ok(proxy_page(address, status, metrics, now_ms))
    } else {
        Err("/status is neither a proxy's nor an LB's".into())
    }
}

fn u64_at(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer).and_then(Value::as_u64).unwrap_or(0)
}

fn lb_page(status: &Value, metrics: &[Line], now_ms: u64) -> Page {
    let service = status["service"].as_str().unwrap_or_default().to_string();
    let outcomes = status["requests"].as_object().cloned().unwrap_or_default();
    let count = |keep: &dyn Fn(&str) -> bool| -> u64 {
        outcomes
            .iter()
            .filter(|(k, _)| keep(k))
            .filter_map(|(_, v)| v.as_u64())
            .sum()
    };
    let requests = count(&|_| true);
    let errors = count(&|k| k != "ok" && k != "oneway");
    let buckets = prom::buckets(metrics, "rpc_lb_request_duration_seconds", |_| true);
    let mean_us = u64_at(status, "/latency/mean_us");
    let workers = status["workers"]
        .as_array()
        .map_or(0, |w| w.iter().filter(|w| w["state"] == "serving").count());
    let registered = status["registered"].as_bool().unwrap_or(false);
    let summary =
        format!(
        "LB of {service}: {}, {workers} worker{} serving, queue {} of {}, {} proxy connection{}",
        if registered { "registered" } else { "not registered" },
        if workers == 1 { "" } else { "s" },
        u64_at(status, "/queue/length"),
        u64_at(status, "/queue/limit"),
        u64_at(status, "/proxy_connections"),
        if u64_at(status, "/proxy_connections") == 1 { "" } else { "s" },
    );
    let reading = Reading {
        at_ms: now_ms,
        requests,
        errors: Some(errors),
        buckets,
        // The mean since start: shown only where no histogram is offered.
        latency_ms: (mean_us > 0).then(|| mean_us as f64 / 1000.0),
    };
    Page {
        kind: Kind::Lb,
        summary,
        readings: BTreeMap::from([(service, reading)]),
        endpoints: Vec::new(),
    }
}

fn proxy_page(address: &str, status: &Value, metrics: &[Line], now_ms: u64) -> Page {
    let endpoints: Vec<ProxyView> = status["endpoints"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|e| ProxyView {
            source: address.to_string(),
            service: e["service"].as_str().unwrap_or_default().to_string(),
            endpoint: e["endpoint"].as_str().unwrap_or_default().to_string(),
            state: e["state"].as_str().unwrap_or_default().to_string(),
            outstanding: e["outstanding"].as_u64().unwrap_or(0),
            latency_us: e["latency_us"].as_u64().unwrap_or(0),
            draining: e["draining"].as_bool().unwrap_or(false),
        })
        .collect();
    let mut readings: BTreeMap<String, Reading> = BTreeMap::new();
    let blank = || Reading {
        at_ms: now_ms,
        ..Reading::default()
    };
    let mut total = blank();
    let mut errors_by_service: BTreeMap<String, u64> = BTreeMap::new();
    let mut total_errors = 0;
    for line in metrics {
        match line.name.as_str() {
            "rpc_proxy_requests_total" => {
                let n = line.value as u64;
                total.requests += n;
                if let Some(service) = line.label("service") {
                    readings
                        .entry(service.to_string())
                        .or_insert_with(blank)
                        .requests += n;
                }
            }
            "rpc_proxy_errors_total" => {
                let n = line.value as u64;
                total_errors += n;
                // A call to a service the proxy does not know has no
                // routing entry to count it: it is a request all the same.
                if line.label("kind") == Some("unknown_service") {
                    total.requests += n;
                }
                if let Some(service) = line.label("service") {
                    *errors_by_service.entry(service.to_string()).or_default() += n;
                }
            }
            _ => {}
        }
    }
    let methods = by_method(metrics, "rpc_proxy");
    for service in methods.keys() {
        readings.entry(service.clone()).or_insert_with(blank);
    }
    for (service, reading) in &mut readings {
        if let Some(&(requests, errors)) = methods.get(service) {
            reading.requests = requests;
            reading.errors = Some(errors);
            reading.buckets = prom::buckets(metrics, "rpc_proxy_method_latency_seconds", |l| {
                l.label("service") == Some(service)
            });
        } else if !errors_by_service.is_empty() {
            reading.errors = Some(errors_by_service.get(service).copied().unwrap_or(0));
        }
        reading.latency_ms = endpoints
            .iter()
            .filter(|e| &e.service == service)
            .map(|e| e.latency_us)
            .max()
            .map(|us| us as f64 / 1000.0);
    }
    total.errors = Some(total_errors);
    readings.insert(String::new(), total);
    let up = endpoints.iter().filter(|e| e.state == "Up").count();
    let summary = format!(
        "proxy: {} client connection{} open, {} accepted; {up} of {} endpoint connection{} up",
        u64_at(status, "/connections_open"),
        if u64_at(status, "/connections_open") == 1 {
            ""
        } else {
            "s"
        },
        u64_at(status, "/connections_accepted"),
        endpoints.len(),
        if endpoints.len() == 1 { "" } else { "s" },
    );
    Page {
        kind: Kind::Proxy,
        summary,
        readings,
        endpoints,
    }
}

/// Calls and errors per service from `{prefix}_method_requests_total
/// {service,method,outcome}`, where the page has them.
fn by_method(metrics: &[Line], prefix: &str) -> BTreeMap<String, (u64, u64)> {
    let name = format!("{prefix}_method_requests_total");
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for line in metrics.iter().filter(|l| l.name == name) {
        let (Some(service), Some(outcome)) = (line.label("service"), line.label("outcome")) else {
            continue;
        };
        let n = line.value as u64;
        let counts = out.entry(service.to_string()).or_default();
        counts.0 += n;
        if outcome != "ok" && outcome != "oneway" {
            counts.1 += n;
        }
    }
    out
}

/// The body of `GET path` on the HTTP server at `address` (`host:port`),
/// which must answer 200 by `deadline`. HTTP/1.0, so the answer is never
/// chunked and ends when the server closes.
pub async fn get(address: &str, path: &str, deadline: Instant) -> Result<String, String> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\nAccept: */*\r\n\r\n");
        s.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut raw = Vec::new();
        (&mut s)
            .take(MAX_BODY as u64 + 1)
            .read_to_end(&mut raw)
            .await
            .map_err(|e| format!("read {path}: {e}"))?;
        if raw.len() > MAX_BODY {
            return Err(format!("{path}: answer over {MAX_BODY} bytes"));
        }
        let text = String::from_utf8(raw).map_err(|_| format!("{path}: not UTF-8"))?;
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("{path}: no HTTP answer"))?;
        let status = head.lines().next().unwrap_or_default();
        if status.split_whitespace().nth(1) != Some("200") {
            return Err(format!("{path}: {status}"));
        }
        Ok(body.to_string())
    };
    match timeout_at(deadline, exchange).await {
        Ok(r) => r,
        Err(_) => Err(format!("{path}: no answer in time")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lb_status(ok: u64, exception: u64) -> Value {
        json!({
            "service": "search",
            "registered": true,
            "proxy_connections": 1,
            "queue": {"length": 0, "limit": 10000},
            "requests": {"ok": ok, "exception": exception, "timeout": 0, "oneway": 5},
            "latency": {"count": ok + exception, "mean_us": 1500},
            "workers": [{"state": "serving"}, {"state": "stopping"}],
        })
    }

    #[test]
    fn an_lb_page_is_one_series_with_errors_and_buckets() {
        let metrics = prom::parse(
            "rpc_lb_request_duration_seconds_bucket{le=\"0.001\"} 2\n\
             rpc_lb_request_duration_seconds_bucket{le=\"+Inf\"} 4\n",
        );
        let page = interpret("lb:1", &lb_status(100, 3), &metrics, 7).unwrap();
        assert_eq!(page.kind, Kind::Lb);
        let r = &page.readings["search"];
        assert_eq!((r.at_ms, r.requests, r.errors), (7, 108, Some(3)));
        assert_eq!(r.buckets, Some(vec![(0.001, 2), (f64::INFINITY, 4)]));
        assert_eq!(r.latency_ms, Some(1.5));
        assert_eq!(
            page.summary,
            "LB of search: registered, 1 worker serving, queue 0 of 10000, 1 proxy connection"
        );
    }

    #[test]
    fn a_proxy_page_has_a_series_per_service_and_a_total() {
        let status = json!({
            "connections_open": 2,
            "connections_accepted": 9,
            "endpoints": [
                {"service": "echo", "endpoint": "127.0.0.1:1", "state": "Up", "outstanding": 1, "latency_us": 800},
                {"service": "echo", "endpoint": "127.0.0.1:2", "state": "Down", "outstanding": 0, "latency_us": 1200},
            ],
        });
        let metrics = prom::parse(
            "rpc_proxy_requests_total{service=\"echo\"} 40\n\
             rpc_proxy_requests_total{service=\"search\"} 2\n\
             rpc_proxy_errors_total{kind=\"no_endpoint\"} 3\n\
             rpc_proxy_errors_total{kind=\"unknown_service\"} 2\n\
             rpc_proxy_errors_total{kind=\"timeout\"} 1\n",
        );
        let page = interpret("proxy:1", &status, &metrics, 9).unwrap();
        assert_eq!(page.kind, Kind::Proxy);
        let echo = &page.readings["echo"];
        assert_eq!(
            (echo.requests, echo.errors, echo.latency_ms),
            (40, None, Some(1.2))
        );
        assert_eq!(page.readings["search"].latency_ms, None);
        let total = &page.readings[""];
        assert_eq!((total.requests, total.errors), (44, Some(6)));
        assert_eq!(page.endpoints.len(), 2);
        assert_eq!(page.endpoints[1].state, "Down");
        assert_eq!(page.endpoints[1].source, "proxy:1");
        assert_eq!(
            page.summary,
            "proxy: 2 client connections open, 9 accepted; 1 of 2 endpoint connections up"
        );
    }

    #[test]
    fn per_service_errors_are_used_when_the_proxy_labels_them() {
        let status = json!({"endpoints": []});
        let metrics = prom::parse(
            "rpc_proxy_requests_total{service=\"echo\"} 10\n\
             rpc_proxy_requests_total{service=\"other\"} 10\n\
             rpc_proxy_errors_total{kind=\"timeout\",service=\"echo\"} 2\n",
        );
        let page = interpret("p", &status, &metrics, 0).unwrap();
        assert_eq!(page.readings["echo"].errors, Some(2));
        assert_eq!(page.readings["other"].errors, Some(0));
    }

    #[test]
    fn a_proxy_counting_by_method_gives_each_service_errors_and_p99() {
        let status = json!({"endpoints": []});
        let metrics = prom::parse(
            "rpc_proxy_requests_total{service=\"echo\"} 10\n\
             rpc_proxy_method_requests_total{service=\"echo\",method=\"a\",outcome=\"ok\"} 6\n\
             rpc_proxy_method_requests_total{service=\"echo\",method=\"a\",outcome=\"timeout\"} 1\n\
             rpc_proxy_method_requests_total{service=\"echo\",method=\"b\",outcome=\"oneway\"} 2\n\
             rpc_proxy_method_requests_total{service=\"echo\",method=\"b\",outcome=\"exception\"} 1\n\
             rpc_proxy_method_latency_seconds_bucket{le=\"0.001\",service=\"echo\",method=\"a\"} 6\n\
             rpc_proxy_method_latency_seconds_bucket{le=\"+Inf\",service=\"echo\",method=\"a\"} 7\n\
             rpc_proxy_method_latency_seconds_bucket{le=\"0.001\",service=\"echo\",method=\"b\"} 0\n\
             rpc_proxy_method_latency_seconds_bucket{le=\"+Inf\",service=\"echo\",method=\"b\"} 1\n",
        );
        let page = interpret("p", &status, &metrics, 0).unwrap();
        let echo = &page.readings["echo"];
        assert_eq!((echo.requests, echo.errors), (10, Some(2)));
        assert_eq!(echo.buckets, Some(vec![(0.001, 6), (f64::INFINITY, 8)]));
    }

    #[test]
    fn anything_else_is_refused() {
        assert!(interpret("x", &json!({"hello": 1}), &[], 0).is_err());
        assert_eq!(normalize(" http://127.0.0.1:9550/ "), "127.0.0.1:9550");
    }

    #[tokio::test]
    async fn reads_a_real_http_page_and_reports_failures() {
        use axum::routing::get as route;
        let app = axum::Router::new()
            .route("/status", route(|| async { axum::Json(lb_status(1, 0)) }))
            .route(
                "/metrics",
                route(|| async { "rpc_lb_request_duration_seconds_bucket{le=\"+Inf\"} 1\n" }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let page = read(&addr, Duration::from_secs(5)).await.unwrap();
        assert_eq!(page.readings["search"].requests, 6);

        let nobody = format!("127.0.0.1:{}", rpc_testkit::free_port());
        let err = read(&nobody, Duration::from_secs(5)).await.unwrap_err();
        assert!(err.starts_with("connect:"), "{err}");
    }
}
