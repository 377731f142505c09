//! What the proxy exposes about itself: Prometheus metrics at `/metrics`,
//! a JSON snapshot at `/status` and a small self-refreshing dashboard at
//! `/`, served on `metrics_address` (or `--profile-address`).
//!
//! Counters on the request path are plain atomics handed out once (a
//! service's request counter lives in its routing entry), so counting costs
//! one atomic add per request and no lookup. Per-endpoint gauges
//! (state, outstanding requests, latency) are read from the live routing
//! table when scraped. Calls per service and method are tallied by each
//! client connection and added to the shared counts once per wake-up
//! ([`CallTally`]).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rpc_config::methods::{MethodCollector, MethodTally, Methods};
use rpc_config::status_page::{self, About, Cell, Dashboard, Recent, StatusPage};
use rpc_engine::Failure;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::backend::State as BackendState;
use crate::routes::Routes;

type Labels = Vec<(&'static str, String)>;

/// Every metric of one proxy.
pub struct Metrics {
    registry: Registry,
    /// Calls per service and method (the status page, open-falcon).
    pub methods: Arc<Methods>,
    requests: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    pub accepted: Counter,
    pub open_connections: Gauge,
    backend_up: Family<Labels, Gauge>,
    backend_outstanding: Family<Labels, Gauge>,
    backend_latency: Family<Labels, Gauge>,
    backend_draining: Family<Labels, Gauge>,
}

/// The error replies the proxy itself produces (SPEC §3), by kind.
#[derive(Clone, Copy)]
pub enum ErrorKind {
    UnknownService,
    NoEndpoint,
    Failed,
    Timeout,
    Protocol,
}

impl ErrorKind {
    fn label(self) -> &'static str {
        match self {
            ErrorKind::UnknownService => "unknown_service",
            ErrorKind::NoEndpoint => "no_endpoint",
            ErrorKind::Failed => "failed",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Protocol => "protocol",
        }
    }
}

impl Metrics {
    /// `max_methods`: methods per service with series of their own.
    pub fn new(max_methods: usize) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("rpc_proxy");
        let methods = Arc::new(Methods::new(max_methods));
        let ends = CALL_ENDS.iter().copied();
        registry.register_collector(Box::new(MethodCollector::new(methods.clone(), ends)));
        let requests = Family::<Labels, Counter>::default();
        let errors = Family::<Labels, Counter>::default();
        let accepted = Counter::default();
        let open_connections = Gauge::default();
        let backend_up = Family::<Labels, Gauge>::default();
        let backend_outstanding = Family::<Labels, Gauge>::default();
        let backend_latency = Family::<Labels, Gauge>::default();
        let backend_draining = Family::<Labels, Gauge>::default();
        registry.register("requests", "Calls received, by service", requests.clone());
        registry.register(
            "errors",
            "Error replies made by the proxy, by kind",
            errors.clone(),
        );
        registry.register(
            "connections_accepted",
            "Client connections accepted",
            accepted.clone(),
        );
        registry.register(
            "connections_open",
            "Client connections open",
            open_connections.clone(),
        );
        registry.register(
            "endpoint_up",
            "1 when the connection to the endpoint is up",
            backend_up.clone(),
        );
        registry.register(
            "endpoint_outstanding",
            "Requests sent to the endpoint and not answered yet",
            backend_outstanding.clone(),
        );
        registry.register(
            "endpoint_latency_microseconds",
            "Reply latency estimate of the endpoint the balancer weighs (peak EWMA; decays toward zero while idle)",
            backend_latency.clone(),
        );
        registry.register(
            "endpoint_draining",
            "1 while an operator has drained the endpoint (rpcctl drain)",
            backend_draining.clone(),
        );
        Arc::new(Metrics {
            registry,
            methods,
            requests,
            errors,
            accepted,
            open_connections,
            backend_up,
            backend_outstanding,
            backend_latency,
            backend_draining,
        })
    }

    /// The request counter of one service, to keep in its routing entry.
    pub fn service_requests(&self, service: &str) -> Counter {
        self.requests
            .get_or_create(&vec![("service", service.to_string())])
            .clone()
    }

    pub fn error(&self, kind: ErrorKind) {
        self.errors
            .get_or_create(&vec![("kind", kind.label().to_string())])
            .inc();
    }

    /// Prometheus text exposition, with endpoint gauges read from `routes`.
    pub fn render(&self, routes: &Routes) -> String {
        self.backend_up.clear();
        self.backend_outstanding.clear();
        self.backend_latency.clear();
        self.backend_draining.clear();
        for (service, pool) in &routes.services {
            for b in pool.endpoints() {
                let labels = vec![
                    ("service", service.clone()),
                    ("endpoint", b.address.to_string()),
                ];
                let up = i64::from(b.state() == BackendState::Up);
                self.backend_up.get_or_create(&labels).set(up);
                self.backend_outstanding
                    .get_or_create(&labels)
                    .set(b.outstanding() as i64);
                self.backend_latency
                    .get_or_create(&labels)
                    .set(b.latency_us() as i64);
                let draining = i64::from(b.marked_drained());
                self.backend_draining.get_or_create(&labels).set(draining);
            }
        }
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

struct Page {
    metrics: Arc<Metrics>,
    routes: watch::Receiver<Arc<Routes>>,
    about: About,
    recent: Recent,
}

/// Serves `/metrics`, `/status` and `/` on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    routes: watch::Receiver<Arc<Routes>>,
    about: About,
) {
    let recent = Recent::new(
        metrics.methods.clone(),
        &[CallEnd::Ok as usize, CallEnd::Oneway as usize],
    );
    let page = Page {
        metrics,
        routes,
        about,
        recent,
    };
    status_page::serve(listener, Arc::new(page)).await;
}

/// One row per endpoint of every service.
fn snapshot(routes: &Routes) -> Vec<serde_json::Value> {
    let mut rows = Vec::new();
    let mut services: Vec<_> = routes.services.iter().collect();
    services.sort_by(|a, b| a.0.cmp(b.0));
    for (service, pool) in services {
        for b in pool.endpoints() {
            rows.push(serde_json::json!({
                "service": service,
                "endpoint": b.address.to_string(),
                "state": format!("{:?}", b.state()),
                "outstanding": b.outstanding(),
                "latency_us": b.latency_us(),
                "draining": b.marked_drained(),
            }));
        }
    }
    rows
}

impl StatusPage for Page {
    fn metrics(&self) -> String {
        let routes = self.routes.borrow().clone();
        self.metrics.render(&routes)
    }

    fn status(&self) -> serde_json::Value {
        let routes = self.routes.borrow().clone();
        let traffic: Vec<_> = self.recent.traffic().iter().map(|t| t.to_json()).collect();
        serde_json::json!({
            "about": self.about.to_json(),
            "connections_open": self.metrics.open_connections.get(),
            "connections_accepted": self.metrics.accepted.get(),
            "traffic": traffic,
            "endpoints": snapshot(&routes),
        })
    }

    fn dashboard(&self) -> String {
        let routes = self.routes.borrow().clone();
        let mut page = Dashboard::new(
            "rpc-proxy",
            ".Up{color:#080}.Down,.Closed{color:#b00}",
            &format!(
                "{} client connections open, {} accepted since start.",
                self.metrics.open_connections.get(),
                self.metrics.accepted.get()
            ),
        );
        page.about(&self.about);
        page.traffic(&self.recent.traffic());
        page.heading("Endpoints");
        page.table(&[
            "service",
            "endpoint",
            "state",
            "draining",
            "outstanding",
            "latency µs",
        ]);
        for row in snapshot(&routes) {
            let text = |k: &str| Cell::Text(row[k].as_str().unwrap_or("").to_string());
            page.row([
                text("service"),
                text("endpoint"),
                Cell::State(row["state"].as_str().unwrap_or("").to_string()),
                Cell::Text(if row["draining"] == true { "yes" } else { "" }.into()),
                Cell::Text(row["outstanding"].to_string()),
                Cell::Text(row["latency_us"].to_string()),
            ]);
        }
        page.finish()
    }
}

/// How a call ended: the `outcome` label of
/// `rpc_proxy_method_requests_total`.
#[derive(Debug, Clone, Copy)]
pub enum CallEnd {
    /// The endpoint's REPLY.
    Ok,
    /// The endpoint's EXCEPTION.
    Exception,
    Timeout,
    /// No endpoint could take it.
    NoEndpoint,
    /// Sent, then the endpoint's connection was lost.
    Lost,
    /// Every connection tried was full or went down before writing it.
    NotSent,
    /// Any other failure (the proxy stopping).
    Failed,
    /// Forwarded, nothing to answer.
    Oneway,
}

const CALL_ENDS: [&str; 8] = [
    "ok",
    "exception",
    "timeout",
    "no_endpoint",
    "lost",
    "not_sent",
    "failed",
    "oneway",
];

impl CallEnd {
    /// The end of a call answered with `failure`.
    pub fn of(failure: &Failure) -> CallEnd {
        match failure {
            Failure::Timeout | Failure::TimeoutInQueue => CallEnd::Timeout,
            Failure::NoEndpoint => CallEnd::NoEndpoint,
            Failure::Lost { .. } => CallEnd::Lost,
            Failure::NotSent => CallEnd::NotSent,
            _ => CallEnd::Failed,
        }
    }
}

/// One client connection's calls per service and method since its last
/// wake-up: no lock or allocation per call (a hash lookup of the name).
pub struct CallTally {
    metrics: Arc<Metrics>,
    tally: MethodTally,
    /// A call arrived this long before its deadline.
    rpc_timeout: Duration,
}

impl CallTally {
    pub fn new(metrics: Arc<Metrics>, rpc_timeout: Duration) -> CallTally {
        CallTally {
            metrics,
            tally: MethodTally::default(),
            rpc_timeout,
        }
    }

    /// A call named `name` (`service:method`, of a known service) with
    /// `deadline` ended at `now`.
    pub fn ended(&mut self, name: &[u8], deadline: Instant, end: CallEnd, now: Instant) {
        let latency = now.saturating_duration_since(self.arrival(deadline));
        self.count(name, end, Some(latency));
    }

    /// When a call with `deadline` arrived.
    pub fn arrival(&self, deadline: Instant) -> Instant {
        deadline.checked_sub(self.rpc_timeout).unwrap_or(deadline)
    }

    /// A oneway call named `name` (of a known service) was forwarded.
    pub fn oneway(&mut self, name: &[u8]) {
        self.count(name, CallEnd::Oneway, None);
    }

    fn count(&mut self, name: &[u8], end: CallEnd, latency: Option<Duration>) {
        let methods = &self.metrics.methods;
        let id = self.tally.id(name, || {
            let (service, method) = match name.iter().position(|&b| b == b':') {
                Some(p) => (&name[..p], &name[p + 1..]),
                None => (&b""[..], name),
            };
            methods.resolve(service, method)
        });
        self.tally.record(id, end as usize, latency);
    }

    /// Adds this wake-up's calls to the shared counts.
    pub fn flush(&mut self) {
        self.tally.flush();
    }
}
