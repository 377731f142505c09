//! `rpcctl top`: live traffic from the status pages of proxies and LBs
//! (`metrics_address`), read every interval: per service, and per method
//! where a page counts calls by method, the request rate, error rate and
//! p99 latency of the last interval; per endpoint, how each proxy sees it
//! (connection state, calls in flight, the balancer's latency estimate,
//! drained), with the traffic of the LB serving it when that LB's page is
//! read too.
//!
//! Pages are read and interpreted by `rpc-dashboard` (`status`, `prom`,
//! `series`), so `top` and the dashboard agree on every number. Per-method
//! readings come from `{rpc_proxy,rpc_lb}_method_requests_total` and the
//! `_method_latency_seconds` histograms.
//!
//! [`Sampler`] keeps the last two reads of each page; [`Snapshot`] is what
//! they say, shown as a table (`--once`, or when standard output is not a
//! terminal) or by the terminal UI ([`crate::tui`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use rpc_dashboard::prom::{self, Line};
use rpc_dashboard::series::{self, Reading};
use rpc_dashboard::status::{self, Page};
use rpc_dashboard::SourceKind;
use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

use crate::table::Table;

/// One read of one page.
struct Read {
    page: Page,
    /// By (service, method).
    methods: BTreeMap<(String, String), Reading>,
    /// An LB's frontend address (its `/status` `about.settings`), to match
    /// the endpoint proxies know it by.
    frontend: Option<String>,
}

struct Source {
    address: String,
    previous: Option<Read>,
    last: Option<Read>,
    error: Option<String>,
}

/// Reads the pages and keeps the last two reads of each.
pub struct Sampler {
    sources: Vec<Source>,
    /// The longest one page's read may take.
    limit: Duration,
}

impl Sampler {
    pub fn new(addresses: &[String], limit: Duration) -> Sampler {
        let sources = addresses
            .iter()
            .map(|a| Source {
                address: status::normalize(a),
                previous: None,
                last: None,
                error: None,
            })
            .collect();
        Sampler { sources, limit }
    }

    /// Reads every page once, all at once.
    pub async fn sample(&mut self) {
        let limit = self.limit;
        let reads = join_all(self.sources.iter().map(|s| read(&s.address, limit))).await;
        for (source, read) in self.sources.iter_mut().zip(reads) {
            match read {
                Ok(r) => {
                    source.previous = source.last.replace(r);
                    source.error = None;
                }
                // A page that could not be read has no interval: its rates
                // start again from the next two reads.
                Err(e) => {
                    source.previous = None;
                    source.last = None;
                    source.error = Some(e);
                }
            }
        }
    }

    /// Whether the last read of every page failed.
    pub fn all_failed(&self) -> bool {
        self.sources.iter().all(|s| s.last.is_none())
    }

    /// What the last two reads say.
    pub fn snapshot(&self) -> Snapshot {
        let mut snap = Snapshot::default();
        // Traffic of each LB by its frontend, for the endpoint rows.
        let mut by_frontend: BTreeMap<&str, (&str, Option<Traffic>)> = BTreeMap::new();
        // Per service, the readings of every proxy, to add them up.
        let mut by_service: BTreeMap<&str, Vec<(&Reading, &Reading)>> = BTreeMap::new();
        for source in &self.sources {
            let Some(last) = &source.last else {
                snap.sources.push(SourceRow {
                    address: source.address.clone(),
                    kind: SourceKind::Unknown,
                    summary: None,
                    error: source.error.clone(),
                });
                continue;
            };
            snap.sources.push(SourceRow {
                address: source.address.clone(),
                kind: last.page.kind,
                summary: Some(last.page.summary.clone()),
                error: None,
            });
            let previous = source.previous.as_ref();
            for (service, reading) in &last.page.readings {
                let before = previous.and_then(|p| p.page.readings.get(service));
                let traffic = before.and_then(|b| Traffic::between(b, reading));
                snap.services.push(ServiceRow {
                    service: (!service.is_empty()).then(|| service.clone()),
                    method: None,
                    source: source.address.clone(),
                    kind: last.page.kind,
                    traffic,
                });
                if let (Some(b), false, SourceKind::Proxy) =
                    (before, service.is_empty(), last.page.kind)
                {
                    by_service.entry(service).or_default().push((b, reading));
                }
                if let (SourceKind::Lb, Some(frontend)) = (last.page.kind, &last.frontend) {
                    by_frontend.insert(frontend, (&source.address, traffic));
                }
            }
            for ((service, method), reading) in &last.methods {
                let key = (service.clone(), method.clone());
                let before = previous.and_then(|p| p.methods.get(&key));
                snap.services.push(ServiceRow {
                    service: Some(service.clone()),
                    method: Some(method.clone()),
                    source: source.address.clone(),
                    kind: last.page.kind,
                    traffic: before.and_then(|b| Traffic::between(b, reading)),
                });
            }
            for e in &last.page.endpoints {
                snap.endpoints.push(EndpointRow {
                    service: e.service.clone(),
                    endpoint: e.endpoint.clone(),
                    source: e.source.clone(),
                    state: e.state.clone(),
                    outstanding: e.outstanding,
                    latency_ms: e.latency_us as f64 / 1000.0,
                    draining: e.draining,
                    lb: None,
                    traffic: None,
                });
            }
        }
        for (service, pairs) in by_service {
            if pairs.len() > 1 {
                snap.services.push(ServiceRow {
                    service: Some(service.to_string()),
                    method: None,
                    source: ALL_PROXIES.into(),
                    kind: SourceKind::Proxy,
                    traffic: Traffic::combined(&pairs),
                });
            }
        }
        for e in &mut snap.endpoints {
            if let Some((lb, traffic)) = by_frontend.get(e.endpoint.as_str()) {
                e.lb = Some(lb.to_string());
                e.traffic = *traffic;
            }
        }
        snap.sort(Order::Name);
        snap
    }
}

/// The source of the rows that add up every proxy's view of a service.
pub const ALL_PROXIES: &str = "(all proxies)";

/// Reads `/status` and `/metrics` of the page at `address` within `limit`.
async fn read(address: &str, limit: Duration) -> Result<Read, String> {
    let deadline = Instant::now() + limit;
    let (status, metrics) = tokio::join!(
        status::get(address, "/status", deadline),
        status::get(address, "/metrics", deadline)
    );
    // Stamped when the answers are in, as the dashboard does.
    let now_ms = unix_ms();
    let status: Value =
        serde_json::from_str(&status?).map_err(|e| format!("/status is not JSON: {e}"))?;
    let metrics = prom::parse(&metrics?);
    let mut page = status::interpret(address, &status, &metrics, now_ms)?;
    let prefix = match page.kind {
        SourceKind::Lb => "rpc_lb",
        _ => "rpc_proxy",
    };
    let methods = by_method(&metrics, prefix, now_ms);
    if let (SourceKind::Proxy, Some(total)) = (page.kind, page.readings.get_mut("")) {
        whole_proxy(total, &methods, &metrics);
    }
    let frontend = status
        .pointer("/about/settings/frontend")
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(Read {
        methods,
        page,
        frontend,
    })
}

/// A proxy's total where it counts calls by method: its errors are every
/// method's (the endpoints' exceptions included, not only the errors the
/// proxy made) plus the calls to unknown services, its p99 that of every
/// method's latency.
fn whole_proxy(
    total: &mut Reading,
    methods: &BTreeMap<(String, String), Reading>,
    metrics: &[Line],
) {
    if methods.is_empty() {
        return;
    }
    let unknown: u64 = metrics
        .iter()
        .filter(|l| {
            l.name == "rpc_proxy_errors_total" && l.label("kind") == Some("unknown_service")
        })
        .map(|l| l.value as u64)
        .sum();
    total.errors = Some(methods.values().filter_map(|r| r.errors).sum::<u64>() + unknown);
    total.buckets = prom::buckets(metrics, "rpc_proxy_method_latency_seconds", |_| true);
}

/// Readings per (service, method) from `{prefix}_method_requests_total
/// {service,method,outcome}` (errors: every outcome but `ok` and `oneway`,
/// as the dashboard counts them) and `{prefix}_method_latency_seconds`.
fn by_method(metrics: &[Line], prefix: &str, now_ms: u64) -> BTreeMap<(String, String), Reading> {
    let name = format!("{prefix}_method_requests_total");
    let mut out: BTreeMap<(String, String), Reading> = BTreeMap::new();
    for line in metrics.iter().filter(|l| l.name == name) {
        let (Some(service), Some(method), Some(outcome)) = (
            line.label("service"),
            line.label("method"),
            line.label("outcome"),
        ) else {
            continue;
        };
        let reading = out
            .entry((service.to_string(), method.to_string()))
            .or_insert_with(|| Reading {
                at_ms: now_ms,
                errors: Some(0),
                ..Reading::default()
            });
        let n = line.value as u64;
        reading.requests += n;
        if outcome != "ok" && outcome != "oneway" {
            *reading.errors.as_mut().expect("set above") += n;
        }
    }
    let histogram = format!("{prefix}_method_latency_seconds");
    for ((service, method), reading) in &mut out {
        reading.buckets = prom::buckets(metrics, &histogram, |l| {
            l.label("service") == Some(service) && l.label("method") == Some(method)
        });
    }
    out
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What everything looked like over the last interval.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    pub sources: Vec<SourceRow>,
    /// By service; a service's own rows (every method) first, then one
    /// per method.
    pub services: Vec<ServiceRow>,
    pub endpoints: Vec<EndpointRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceRow {
    pub address: String,
    pub kind: SourceKind,
    /// One line about the process, when the page was read.
    pub summary: Option<String>,
    /// Why it was not.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceRow {
    /// `None`: every call the proxy got (unknown services included).
    pub service: Option<String>,
    /// `None`: every method of the service.
    pub method: Option<String>,
    /// The status page, or [`ALL_PROXIES`].
    pub source: String,
    pub kind: SourceKind,
    /// `None` until the page has been read twice.
    pub traffic: Option<Traffic>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EndpointRow {
    pub service: String,
    pub endpoint: String,
    /// The proxy's status page that reports it.
    pub source: String,
    /// The proxy's connection state (`Up`, `Down`, ...).
    pub state: String,
    /// Calls sent and not answered yet.
    pub outstanding: u64,
    /// The balancer's latency estimate.
    pub latency_ms: f64,
    pub draining: bool,
    /// The status page of the LB at this endpoint, when read.
    pub lb: Option<String>,
    /// That LB's traffic.
    pub traffic: Option<Traffic>,
}

/// One interval of traffic.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Traffic {
    /// Calls per second.
    pub rate: f64,
    /// Failed calls per second, when the page counts them.
    pub errors: Option<f64>,
    /// Failed calls as a fraction of calls.
    pub error_rate: Option<f64>,
    /// 99th percentile latency, when the page has a histogram and calls
    /// were answered.
    pub p99_ms: Option<f64>,
}

impl Traffic {
    fn between(before: &Reading, now: &Reading) -> Option<Traffic> {
        let s = series::sample(before, now)?;
        Some(Traffic {
            rate: s.rate,
            errors: s.error_rate.map(|e| e * s.rate),
            error_rate: s.error_rate,
            p99_ms: s.p99_ms,
        })
    }

    /// Several proxies' intervals of one service: rates and errors add up;
    /// p99 is that of all their latencies together when their histograms
    /// have the same buckets.
    fn combined(pairs: &[(&Reading, &Reading)]) -> Option<Traffic> {
        let each: Vec<Traffic> = pairs
            .iter()
            .map(|(b, n)| Traffic::between(b, n))
            .collect::<Option<_>>()?;
        let rate = each.iter().map(|t| t.rate).sum::<f64>();
        let errors = each.iter().map(|t| t.errors).sum::<Option<f64>>();
        let error_rate = errors.map(|e| if rate > 0.0 { (e / rate).min(1.0) } else { 0.0 });
        let before = sum_buckets(pairs.iter().map(|p| p.0));
        let now = sum_buckets(pairs.iter().map(|p| p.1));
        let p99_ms = match (before, now) {
            (Some(b), Some(n)) => series::quantile(0.99, &b, &n).map(|s| s * 1000.0),
            _ => None,
        };
        Some(Traffic {
            rate,
            errors,
            error_rate,
            p99_ms,
        })
    }
}

/// The cumulative buckets of several readings added up; `None` when one
/// has none or their bounds differ.
fn sum_buckets<'a>(readings: impl Iterator<Item = &'a Reading>) -> Option<Vec<(f64, u64)>> {
    let mut sum: Option<Vec<(f64, u64)>> = None;
    for r in readings {
        let b = r.buckets.as_ref()?;
        sum = Some(match sum {
            None => b.clone(),
            Some(s) if s.len() == b.len() && s.iter().zip(b).all(|(x, y)| x.0 == y.0) => {
                s.iter().zip(b).map(|(x, y)| (x.0, x.1 + y.1)).collect()
            }
            Some(_) => return None,
        });
    }
    sum
}

/// Row order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Name,
    /// Busiest services first, and each one's busiest methods.
    Rate,
}

impl Snapshot {
    pub fn sort(&mut self, order: Order) {
        let rate = |r: &ServiceRow| r.traffic.map_or(-1.0, |t| t.rate);
        // A service's weight: its busiest row over every method.
        let mut weight: BTreeMap<Option<String>, f64> = BTreeMap::new();
        for r in self.services.iter().filter(|r| r.method.is_none()) {
            let w = weight.entry(r.service.clone()).or_insert(-1.0);
            *w = w.max(rate(r));
        }
        self.services.sort_by(|a, b| {
            // The proxies' totals last; then by service.
            let by_service = a.service.is_none().cmp(&b.service.is_none()).then_with(|| {
                match order {
                    Order::Name => std::cmp::Ordering::Equal,
                    Order::Rate => {
                        let w = |s: &Option<String>| weight.get(s).copied().unwrap_or(-1.0);
                        w(&b.service).total_cmp(&w(&a.service))
                    }
                }
                .then_with(|| a.service.cmp(&b.service))
            });
            by_service
                // A service's own rows before its methods'.
                .then_with(|| a.method.is_some().cmp(&b.method.is_some()))
                .then_with(|| match order {
                    Order::Name => std::cmp::Ordering::Equal,
                    Order::Rate if a.method.is_some() => rate(b).total_cmp(&rate(a)),
                    Order::Rate => std::cmp::Ordering::Equal,
                })
                .then_with(|| a.method.cmp(&b.method))
                // The sum of the proxies after each proxy's own.
                .then_with(|| (a.source == ALL_PROXIES).cmp(&(b.source == ALL_PROXIES)))
                .then_with(|| a.source.cmp(&b.source))
        });
        self.endpoints.sort_by(|a, b| {
            (&a.service, &a.endpoint, &a.source).cmp(&(&b.service, &b.endpoint, &b.source))
        });
    }

    /// The plain-text form: the pages, then the services, then the
    /// endpoints, each an aligned table.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let mut sources = Table::new(&["SOURCE", "KIND", "STATUS"]);
        for s in &self.sources {
            sources.row(vec![s.address.clone(), kind(s.kind).into(), s.status()]);
        }
        out.push_str(&sources.render());
        out.push('\n');
        let mut services = Table::new(&[
            "SERVICE", "METHOD", "SOURCE", "KIND", "REQ/S", "ERR/S", "ERR%", "P99(ms)",
        ]);
        for r in &self.services {
            let mut row = vec![
                r.service_text().into(),
                r.method_text().into(),
                r.source.clone(),
                kind(r.kind).into(),
            ];
            row.extend(traffic_cells(r.traffic.as_ref()));
            services.row(row);
        }
        if services.is_empty() {
            out.push_str("no traffic counted yet\n");
        } else {
            out.push_str(&services.render());
        }
        if !self.endpoints.is_empty() {
            out.push('\n');
            let mut endpoints = Table::new(&[
                "SERVICE",
                "ENDPOINT",
                "SEEN BY",
                "STATE",
                "IN FLIGHT",
                "EST(ms)",
                "DRAINING",
                "REQ/S",
                "ERR/S",
                "ERR%",
                "P99(ms)",
            ]);
            for e in &self.endpoints {
                let mut row = e.cells();
                row.extend(traffic_cells(e.traffic.as_ref()));
                endpoints.row(row);
            }
            out.push_str(&endpoints.render());
        }
        out
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a snapshot serializes") + "\n"
    }
}

impl SourceRow {
    pub fn status(&self) -> String {
        match (&self.summary, &self.error) {
            (Some(s), _) => s.clone(),
            (None, Some(e)) => format!("error: {e}"),
            (None, None) => String::new(),
        }
    }
}

impl ServiceRow {
    pub fn service_text(&self) -> &str {
        self.service.as_deref().unwrap_or("*")
    }

    pub fn method_text(&self) -> &str {
        self.method.as_deref().unwrap_or("*")
    }
}

impl EndpointRow {
    /// The cells before the traffic ones.
    pub fn cells(&self) -> Vec<String> {
        vec![
            self.service.clone(),
            self.endpoint.clone(),
            self.source.clone(),
            self.state.clone(),
            self.outstanding.to_string(),
            format!("{:.2}", self.latency_ms),
            if self.draining { "yes" } else { "no" }.into(),
        ]
    }
}

pub fn kind(k: SourceKind) -> &'static str {
    match k {
        SourceKind::Proxy => "proxy",
        SourceKind::Lb => "lb",
        SourceKind::Unknown => "",
    }
}

/// REQ/S, ERR/S, ERR%, P99(ms); blank where unknown.
pub fn traffic_cells(t: Option<&Traffic>) -> [String; 4] {
    let Some(t) = t else {
        return Default::default();
    };
    let mut err_pct = String::new();
    if let Some(e) = t.error_rate {
        let _ = write!(err_pct, "{:.1}%", e * 100.0);
    }
    [
        format!("{:.1}", t.rate),
        t.errors.map(|e| format!("{e:.1}")).unwrap_or_default(),
        err_pct,
        t.p99_ms.map(|p| format!("{p:.2}")).unwrap_or_default(),
    ]
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn proxy_metrics(echo_ok: u64, echo_fail: u64, le_1ms: u64) -> Vec<Line> {
        prom::parse(&format!(
            "rpc_proxy_requests_total{{service=\"echo\"}} {}\n\
             rpc_proxy_method_requests_total{{service=\"echo\",method=\"echo\",outcome=\"ok\"}} {echo_ok}\n\
             rpc_proxy_method_requests_total{{service=\"echo\",method=\"fail\",outcome=\"exception\"}} {echo_fail}\n\
             rpc_proxy_method_requests_total{{service=\"echo\",method=\"fail\",outcome=\"ok\"}} 0\n\
             rpc_proxy_method_latency_seconds_bucket{{service=\"echo\",method=\"echo\",le=\"0.001\"}} {le_1ms}\n\
             rpc_proxy_method_latency_seconds_bucket{{service=\"echo\",method=\"echo\",le=\"+Inf\"}} {echo_ok}\n\
             rpc_proxy_method_latency_seconds_bucket{{service=\"echo\",method=\"fail\",le=\"0.001\"}} {echo_fail}\n\
             rpc_proxy_method_latency_seconds_bucket{{service=\"echo\",method=\"fail\",le=\"+Inf\"}} {echo_fail}\n",
            echo_ok + echo_fail
        ))
    }

    fn proxy_read(address: &str, at_ms: u64, metrics: &[Line]) -> Read {
        let status = json!({
            "connections_open": 1,
            "connections_accepted": 1,
            "endpoints": [{"service": "echo", "endpoint": "127.0.0.1:7000", "state": "Up",
                           "outstanding": 2, "latency_us": 1500, "draining": false}],
        });
        let mut page = status::interpret(address, &status, metrics, at_ms).unwrap();
        let methods = by_method(metrics, "rpc_proxy", at_ms);
        whole_proxy(page.readings.get_mut("").unwrap(), &methods, metrics);
        Read {
            page,
            methods,
            frontend: None,
        }
    }

    fn lb_read(at_ms: u64, ok: u64) -> Read {
        let status = json!({
            "service": "echo",
            "registered": true,
            "requests": {"ok": ok, "exception": 0},
            "about": {"settings": {"frontend": "127.0.0.1:7000"}},
        });
        let metrics = prom::parse(&format!(
            "rpc_lb_method_requests_total{{service=\"echo\",method=\"echo\",outcome=\"ok\"}} {ok}\n"
        ));
        Read {
            page: status::interpret("lb:1", &status, &metrics, at_ms).unwrap(),
            methods: by_method(&metrics, "rpc_lb", at_ms),
            frontend: Some("127.0.0.1:7000".into()),
        }
    }

    fn sampler(sources: Vec<(&str, Option<Read>, Option<Read>)>) -> Sampler {
        Sampler {
            sources: sources
                .into_iter()
                .map(|(address, previous, last)| Source {
                    address: address.into(),
                    previous,
                    last,
                    error: None,
                })
                .collect(),
            limit: Duration::from_secs(1),
        }
    }

    fn row<'a>(
        snap: &'a Snapshot,
        service: Option<&str>,
        method: Option<&str>,
        source: &str,
    ) -> &'a ServiceRow {
        snap.services
            .iter()
            .find(|r| {
                r.service.as_deref() == service
                    && r.method.as_deref() == method
                    && r.source == source
            })
            .unwrap_or_else(|| panic!("no row {service:?} {method:?} {source} in {snap:#?}"))
    }

    #[test]
    fn rates_errors_and_p99_per_service_and_method() {
        let s = sampler(vec![(
            "p:1",
            Some(proxy_read("p:1", 1_000, &proxy_metrics(100, 0, 100))),
            Some(proxy_read("p:1", 3_000, &proxy_metrics(300, 20, 290))),
        )]);
        let snap = s.snapshot();
        let echo = row(&snap, Some("echo"), None, "p:1").traffic.unwrap();
        assert_eq!(echo.rate, 110.0);
        assert_eq!(echo.errors, Some(10.0));
        let method = row(&snap, Some("echo"), Some("echo"), "p:1")
            .traffic
            .unwrap();
        assert_eq!((method.rate, method.error_rate), (100.0, Some(0.0)));
        // 190 of 200 new calls under 1 ms: rank 198 lies in the +Inf
        // bucket, shown as its lower bound.
        assert_eq!(method.p99_ms, Some(1.0));
        let fail = row(&snap, Some("echo"), Some("fail"), "p:1")
            .traffic
            .unwrap();
        assert_eq!((fail.rate, fail.error_rate), (10.0, Some(1.0)));
        let total = row(&snap, None, None, "p:1").traffic.unwrap();
        assert_eq!((total.rate, total.errors), (110.0, Some(10.0)));
        assert!(total.p99_ms.is_some());
        // Order: the service, its methods, the proxy's total last.
        let order: Vec<(&str, &str)> = snap
            .services
            .iter()
            .map(|r| (r.service_text(), r.method_text()))
            .collect();
        assert_eq!(
            order,
            [
                ("echo", "*"),
                ("echo", "echo"),
                ("echo", "fail"),
                ("*", "*")
            ]
        );
        let e = &snap.endpoints[0];
        assert_eq!(
            (e.state.as_str(), e.outstanding, e.latency_ms),
            ("Up", 2, 1.5)
        );
    }

    #[test]
    fn one_read_shows_the_page_without_rates() {
        let s = sampler(vec![(
            "p:1",
            None,
            Some(proxy_read("p:1", 1_000, &proxy_metrics(1, 0, 1))),
        )]);
        let snap = s.snapshot();
        assert!(snap.services.iter().all(|r| r.traffic.is_none()));
        let text = snap.to_text();
        assert!(
            text.contains("echo     echo    p:1     proxy  -      -      -     -\n"),
            "{text}"
        );
    }

    #[test]
    fn several_proxies_add_up_and_an_lb_fills_its_endpoint() {
        let s = sampler(vec![
            (
                "p:1",
                Some(proxy_read("p:1", 1_000, &proxy_metrics(0, 0, 0))),
                Some(proxy_read("p:1", 2_000, &proxy_metrics(10, 0, 10))),
            ),
            (
                "p:2",
                Some(proxy_read("p:2", 1_000, &proxy_metrics(0, 0, 0))),
                Some(proxy_read("p:2", 2_000, &proxy_metrics(30, 10, 30))),
            ),
            ("lb:1", Some(lb_read(1_000, 5)), Some(lb_read(2_000, 45))),
        ]);
        let snap = s.snapshot();
        let all = row(&snap, Some("echo"), None, ALL_PROXIES).traffic.unwrap();
        assert_eq!(
            (all.rate, all.errors, all.error_rate),
            (50.0, Some(10.0), Some(0.2))
        );
        assert!(all.p99_ms.unwrap() <= 1.0, "{all:?}");
        let lb = row(&snap, Some("echo"), Some("echo"), "lb:1")
            .traffic
            .unwrap();
        assert_eq!(lb.rate, 40.0);
        assert_eq!(snap.endpoints.len(), 2);
        for e in &snap.endpoints {
            assert_eq!(e.lb.as_deref(), Some("lb:1"));
            assert_eq!(e.traffic.unwrap().rate, 40.0);
        }
        let text = snap.to_text();
        assert!(
            text.contains("echo     *       (all proxies)  proxy  50.0   10.0   20.0%"),
            "{text}"
        );
    }

    #[test]
    fn rate_order_puts_the_busiest_first() {
        let mut snap = Snapshot::default();
        let r = |service: &str, method: Option<&str>, rate: f64| ServiceRow {
            service: Some(service.into()),
            method: method.map(str::to_string),
            source: "p".into(),
            kind: SourceKind::Proxy,
            traffic: Some(Traffic {
                rate,
                errors: None,
                error_rate: None,
                p99_ms: None,
            }),
        };
        snap.services = vec![
            r("a", None, 1.0),
            r("a", Some("x"), 1.0),
            r("b", None, 9.0),
            r("b", Some("slow"), 1.0),
            r("b", Some("fast"), 8.0),
        ];
        snap.sort(Order::Rate);
        let order: Vec<(&str, &str)> = snap
            .services
            .iter()
            .map(|r| (r.service_text(), r.method_text()))
            .collect();
        assert_eq!(
            order,
            [
                ("b", "*"),
                ("b", "fast"),
                ("b", "slow"),
                ("a", "*"),
                ("a", "x")
            ]
        );
        snap.sort(Order::Name);
        assert_eq!(snap.services[0].service_text(), "a");
    }

    #[test]
    fn an_unreadable_page_says_why() {
        let mut s = sampler(vec![("p:1", None, None)]);
        s.sources[0].error = Some("connect: refused".into());
        assert!(s.all_failed());
        let text = s.snapshot().to_text();
        assert!(
            text.contains("p:1     -     error: connect: refused"),
            "{text}"
        );
        assert!(text.contains("no traffic counted yet"), "{text}");
    }
}
