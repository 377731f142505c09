//! The fleet model: what the registry holds, what each endpoint answers,
//! and what the status pages count, refreshed as a whole and published as
//! one JSON document (`GET /api/fleet`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use rpc_registry::Endpoint;
use serde::Serialize;
use tokio::sync::watch;

use crate::registry::{Reader, Tree};
use crate::series::{Sample, Series};
use crate::status::{self, Kind, Page, ProxyView};
use crate::{code_link, probe, Options};

/// Heartbeats sent at once; a larger fleet is probed in waves.
const PROBES_AT_ONCE: usize = 64;

/// The document of `GET /api/fleet`.
#[derive(Debug, Serialize)]
pub struct Fleet {
    /// The registry read, as `--zk` spells it.
    pub registry: String,
    /// How often the model is refreshed, and so how often the page asks.
    pub refresh_ms: u64,
    /// How far back the traffic samples go.
    pub history_ms: u64,
    /// Unix milliseconds of this snapshot; 0 before the first refresh.
    pub updated_ms: u64,
    /// Unix milliseconds of the last successful registry read.
    pub registry_read_ms: Option<u64>,
    /// Why the last registry read failed; the tree is then the last one
    /// read (a registry that cannot be read removes nothing).
    pub registry_error: Option<String>,
    pub products: Vec<ProductView>,
    /// The status pages polled.
    pub sources: Vec<SourceView>,
    /// One series per status page and service it counts; `service` is
    /// `""` for a proxy's total.
    pub traffic: Vec<TrafficView>,
}

#[derive(Debug, Serialize)]
pub struct ProductView {
    pub product: String,
    pub services: Vec<ServiceView>,
}

#[derive(Debug, Serialize)]
pub struct ServiceView {
    pub service: String,
    /// By `service_id`; those that left the registry stay a while.
    pub endpoints: Vec<EndpointView>,
}

/// An endpoint's live state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Registered, not probed yet.
    Unknown,
    /// Registered and echoing heartbeats.
    Up,
    /// Registered and not echoing (stalled, or died without leaving).
    Down,
    /// Echoing, and taking no new calls: it left the registry and is
    /// finishing its calls, or an operator drained it (as a proxy polled
    /// reports).
    Draining,
    /// Left the registry and no longer answering.
    Gone,
}

#[derive(Debug, Serialize)]
pub struct EndpointView {
    /// The SPEC §6 record as registered (its last version, once gone).
    #[serde(flatten)]
    pub record: Endpoint,
    /// A web link for `code_url_version` (its commit where it names one).
    pub code_link: Option<String>,
    pub state: State,
    /// Heartbeat round trip of the last probe that got an echo, µs.
    pub rtt_us: Option<u64>,
    /// Why the last probe got no echo.
    pub error: Option<String>,
    /// Unix milliseconds of the last probe.
    pub checked_ms: Option<u64>,
    /// Unix milliseconds it was first missing from the registry.
    pub left_ms: Option<u64>,
    /// How each proxy polled sees it.
    pub proxies: Vec<ProxyView>,
    /// Drained by an operator: a drain mark in the registry, or a proxy
    /// polled reports it so.
    pub drained: bool,
}

#[derive(Debug, Serialize)]
pub struct SourceView {
    /// `host:port` of the status page.
    pub address: String,
    pub kind: Kind,
    /// Whether the last read succeeded.
    pub reachable: bool,
    pub error: Option<String>,
    /// Unix milliseconds of the last successful read.
    pub read_ms: Option<u64>,
    pub summary: String,
}

#[derive(Debug, Serialize)]
pub struct TrafficView {
    pub source: String,
    pub kind: Kind,
    pub service: String,
    /// Oldest first; the last one is the current value.
    pub samples: Vec<Sample>,
}

/// (product, service, service_id).
type Key = (String, String, String);

/// Why a TLS endpoint's state is unknown.
const NO_TLS_KEYS: &str = "serves TLS only: not probed without a proxy's keys \
                           (rpcctl -c proxy.ini, or --tls-ca, --tls-cert, --tls-key)";

#[derive(Debug)]
struct Tracked {
    record: Endpoint,
    left_ms: Option<u64>,
    /// Left the registry and stopped echoing: no longer probed.
    gone: bool,
    /// (Unix ms, round trip µs or why not) of the last probe.
    probe: Option<(u64, Result<u64, String>)>,
}

impl Tracked {
    fn state(&self) -> State {
        let answered = matches!(self.probe, Some((_, Ok(_))));
        match (self.left_ms, &self.probe) {
            (None, None) => State::Unknown,
            (None, Some(_)) if answered => State::Up,
            (None, Some(_)) => State::Down,
            (Some(_), _) if answered && !self.gone => State::Draining,
            (Some(_), _) => State::Gone,
        }
    }
}

struct Source {
    address: String,
    kind: Kind,
    error: Option<String>,
    read_ms: Option<u64>,
    summary: String,
    endpoints: Vec<ProxyView>,
    series: BTreeMap<String, Series>,
}

/// Everything the dashboard knows, updated by [`Collector::refresh`].
pub struct Collector {
    options: Options,
    reader: Reader,
    /// Every product's services as last read (those without endpoints too).
    services: BTreeMap<String, BTreeSet<String>>,
    tracked: BTreeMap<Key, Tracked>,
    registry_read_ms: Option<u64>,
    registry_error: Option<String>,
    sources: Vec<Source>,
    updated_ms: u64,
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Collector {
    pub fn new(options: Options) -> Collector {
        let reader = Reader::new(&options.registry, options.registry_timeout);
        let mut seen = BTreeSet::new();
        let sources = options
            .status_pages
            .iter()
            .map(|a| status::normalize(a))
            .filter(|a| !a.is_empty() && seen.insert(a.clone()))
            .map(|address| Source {
                address,
                kind: Kind::Unknown,
                error: None,
                read_ms: None,
                summary: String::new(),
                endpoints: Vec::new(),
                series: BTreeMap::new(),
            })
            .collect();
        Collector {
            options,
            reader,
            services: BTreeMap::new(),
            tracked: BTreeMap::new(),
            registry_read_ms: None,
            registry_error: None,
            sources,
            updated_ms: 0,
        }
    }

    /// Refreshes the model every `options.refresh` and publishes each
    /// snapshot as JSON. Never returns.
    pub async fn run(mut self, publish: watch::Sender<Arc<[u8]>>) {
        let mut tick = tokio::time::interval(self.options.refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.refresh().await;
            publish.send_replace(self.to_json());
        }
    }

    /// One refresh: the registry, then a heartbeat to every endpoint still
    /// worth one; the status pages meanwhile.
    pub async fn refresh(&mut self) {
        let limit = self.options.status_timeout;
        let addresses: Vec<String> = self.sources.iter().map(|s| s.address.clone()).collect();
        let pages = futures::future::join_all(
            addresses
                .iter()
                .map(|a| async move { status::read(a, limit).await }),
        );
        let registry_and_probes = async {
            let tree = self.reader.read().await;
            let now = unix_ms();
            match tree {
                Ok(tree) => self.apply_registry(tree, now),
                Err(e) => {
                    if self.registry_error.as_deref() != Some(e.as_str()) {
                        tracing::warn!(error = %e, "cannot read the registry");
                    }
                    self.registry_error = Some(e);
                }
            }
            self.probe_all().await;
        };
        let ((), pages) = tokio::join!(registry_and_probes, pages);
        let keep_ms = self.options.history.as_millis() as u64;
        for (source, page) in self.sources.iter_mut().zip(pages) {
            source.apply(page, keep_ms);
        }
        self.updated_ms = unix_ms();
    }

    /// Takes in a registry read made at `now_ms`: new and updated records,
    /// endpoints that left (kept `gone_for`), services.
    fn apply_registry(&mut self, tree: Tree, now_ms: u64) {
        self.registry_error = None;
        self.registry_read_ms = Some(now_ms);
        self.services.clear();
        let mut present = BTreeSet::new();
        for (product, services) in tree {
            let names = self.services.entry(product.clone()).or_default();
            for (service, endpoints) in services {
                names.insert(service.clone());
                for record in endpoints {
                    let key = (product.clone(), service.clone(), record.service_id.clone());
                    present.insert(key.clone());
                    let t = self.tracked.entry(key).or_insert_with(|| Tracked {
                        record: record.clone(),
                        left_ms: None,
                        gone: false,
                        probe: None,
                    });
                    if t.left_ms.is_some() {
                        // Back in the registry: judged afresh.
                        t.probe = None;
                    }
                    t.record = record;
                    t.left_ms = None;
                    t.gone = false;
                }
            }
        }
        let keep = self.options.gone_for.as_millis() as u64;
        self.tracked.retain(|key, t| {
            if !present.contains(key) {
                let left = *t.left_ms.get_or_insert(now_ms);
                return now_ms.saturating_sub(left) < keep;
            }
            true
        });
    }

    /// One heartbeat to every endpoint not yet known to be gone.
    async fn probe_all(&mut self) {
        let limit = self.options.probe_timeout;
        let tls = self.options.tls.as_deref();
        let targets: Vec<(Key, String, bool)> = self
            .tracked
            .iter()
            .filter(|(_, t)| !t.gone && self.can_probe(&t.record))
            .map(|(k, t)| (k.clone(), t.record.frontend.clone(), t.record.tls))
            .collect();
        let results: Vec<(Key, Result<Duration, String>)> = futures::stream::iter(targets)
            .map(|(key, frontend, serves_tls)| async move {
                let rtt = probe::heartbeat_rtt(&frontend, serves_tls, tls, limit).await;
                (key, rtt)
            })
            .buffer_unordered(PROBES_AT_ONCE)
            .collect()
            .await;
        let now = unix_ms();
        for (key, result) in results {
            self.apply_probe(&key, result.map(|d| d.as_micros() as u64), now);
        }
    }

    /// An endpoint that registered TLS accepts nothing from a dashboard
    /// without a proxy's keys: it is left unprobed rather than shown down.
    fn can_probe(&self, record: &Endpoint) -> bool {
        !record.tls || self.options.tls.is_some()
    }

    fn apply_probe(&mut self, key: &Key, result: Result<u64, String>, now_ms: u64) {
        if let Some(t) = self.tracked.get_mut(key) {
            if t.left_ms.is_some() && result.is_err() {
                t.gone = true;
            }
            t.probe = Some((now_ms, result));
        }
    }

    pub fn snapshot(&self) -> Fleet {
        let mut products: BTreeMap<&str, BTreeMap<&str, Vec<EndpointView>>> = BTreeMap::new();
        for (product, services) in &self.services {
            let p = products.entry(product).or_default();
            for service in services {
                p.entry(service).or_default();
            }
        }
        let views: Vec<&ProxyView> = self.sources.iter().flat_map(|s| &s.endpoints).collect();
        for ((product, service, _), t) in &self.tracked {
            let (rtt_us, error, checked_ms) = match &t.probe {
                None if !self.can_probe(&t.record) => (None, Some(NO_TLS_KEYS.into()), None),
                None => (None, None, None),
                Some((at, Ok(us))) => (Some(*us), None, Some(*at)),
                Some((at, Err(e))) => (None, Some(e.clone()), Some(*at)),
            };
            let proxies: Vec<ProxyView> = views
                .iter()
                .filter(|v| v.service == *service && v.endpoint == t.record.frontend)
                .map(|v| (*v).clone())
                .collect();
            let drained = t.record.draining || proxies.iter().any(|p| p.draining);
            let state = match t.state() {
                State::Up if drained => State::Draining,
                state => state,
            };
            products
                .entry(product)
                .or_default()
                .entry(service)
                .or_default()
                .push(EndpointView {
                    code_link: code_link::link(&t.record.code_url_version),
                    record: t.record.clone(),
                    state,
                    rtt_us,
                    error,
                    checked_ms,
                    left_ms: t.left_ms,
                    proxies,
                    drained,
                });
        }
        let products = products
            .into_iter()
            .map(|(product, services)| ProductView {
                product: product.to_string(),
                services: services
                    .into_iter()
                    .map(|(service, endpoints)| ServiceView {
                        service: service.to_string(),
                        endpoints,
                    })
                    .collect(),
            })
            .collect();
        let sources = self
            .sources
            .iter()
            .map(|s| SourceView {
                address: s.address.clone(),
                kind: s.kind,
                reachable: s.error.is_none() && s.read_ms.is_some(),
                error: s.error.clone(),
                read_ms: s.read_ms,
                summary: s.summary.clone(),
            })
            .collect();
        let traffic = self
            .sources
            .iter()
            .flat_map(|s| {
                s.series.iter().map(|(service, series)| TrafficView {
                    source: s.address.clone(),
                    kind: s.kind,
                    service: service.clone(),
                    samples: series.samples().copied().collect(),
                })
            })
            .collect();
        Fleet {
            registry: self.reader.describe(),
            refresh_ms: self.options.refresh.as_millis() as u64,
            history_ms: self.options.history.as_millis() as u64,
            updated_ms: self.updated_ms,
            registry_read_ms: self.registry_read_ms,
            registry_error: self.registry_error.clone(),
            products,
            sources,
            traffic,
        }
    }

    pub fn to_json(&self) -> Arc<[u8]> {
        serde_json::to_vec(&self.snapshot())
            .expect("the fleet serializes")
            .into()
    }
}

impl Source {
    fn apply(&mut self, page: Result<Page, String>, keep_ms: u64) {
        match page {
            Ok(page) => {
                self.kind = page.kind;
                self.error = None;
                self.summary = page.summary;
                self.endpoints = page.endpoints;
                let at = page.readings.values().map(|r| r.at_ms).max();
                self.read_ms = at.or(self.read_ms);
                for (service, reading) in page.readings {
                    self.series
                        .entry(service)
                        .or_default()
                        .push(reading, keep_ms);
                }
                // A service the page no longer counts fades out with its
                // last samples.
                let oldest = at.unwrap_or(0).saturating_sub(keep_ms);
                self.series
                    .retain(|_, s| s.last_read_ms().is_some_and(|t| t >= oldest));
            }
            Err(e) => {
                if self.error.as_deref() != Some(e.as_str()) {
                    tracing::debug!(page = %self.address, error = %e, "status page unreadable");
                }
                self.error = Some(e);
                // Its views of the endpoints are no longer current.
                self.endpoints.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rpc_config::RegistrySpec;
    use rpc_registry::ServiceMap;

    fn record(service: &str, frontend: &str) -> Endpoint {
        let mut e = Endpoint::new(service, frontend);
        e.code_url_version = "git@host:team/echo.git@1a2b3c4".into();
        e
    }

    fn tree(entries: &[(&str, &str, &[&str])]) -> Tree {
        let mut tree = Tree::new();
        for (product, service, frontends) in entries {
            let services: &mut ServiceMap = tree.entry(product.to_string()).or_default();
            services.insert(
                service.to_string(),
                frontends.iter().map(|f| record(service, f)).collect(),
            );
        }
        tree
    }

    fn collector() -> Collector {
        let mut options = Options::new(RegistrySpec::Local("/nonexistent".into()));
        options.gone_for = Duration::from_secs(60);
        options.status_pages = vec!["http://127.0.0.1:1/".into(), "127.0.0.1:1".into()];
        Collector::new(options)
    }

    fn key(product: &str, service: &str, frontend: &str) -> Key {
        (
            product.into(),
            service.into(),
            rpc_registry::service_id(frontend),
        )
    }

    fn states(c: &Collector) -> Vec<(String, String, State)> {
        c.snapshot()
            .products
            .into_iter()
            .flat_map(|p| {
                p.services.into_iter().flat_map(move |s| {
                    let product = p.product.clone();
                    s.endpoints
                        .into_iter()
                        .map(move |e| (product.clone(), e.record.frontend, e.state))
                })
            })
            .collect()
    }

    #[test]
    fn endpoints_go_from_unknown_to_up_down_draining_and_gone() {
        let mut c = collector();
        let (a, b) = ("127.0.0.1:5555", "127.0.0.1:5556");
        c.apply_registry(tree(&[("test", "echo", &[a, b])]), 1_000);
        assert!(states(&c).iter().all(|s| s.2 == State::Unknown));
        c.apply_probe(&key("test", "echo", a), Ok(120), 1_001);
        c.apply_probe(
            &key("test", "echo", b),
            Err("connect: refused".into()),
            1_001,
        );
        let s = c.snapshot();
        let eps = &s.products[0].services[0].endpoints;
        assert_eq!((eps[0].state, eps[0].rtt_us), (State::Up, Some(120)));
        assert_eq!(
            eps[0].code_link.as_deref(),
            Some("https://host/team/echo/commit/1a2b3c4")
        );
        assert_eq!(eps[1].state, State::Down);
        assert_eq!(eps[1].error.as_deref(), Some("connect: refused"));

        // a leaves the registry and still echoes: draining; then silent: gone.
        c.apply_registry(tree(&[("test", "echo", &[b])]), 3_000);
        c.apply_probe(&key("test", "echo", a), Ok(90), 3_001);
        assert!(states(&c).contains(&("test".into(), a.into(), State::Draining)));
        c.apply_probe(
            &key("test", "echo", a),
            Err("connect: refused".into()),
            5_001,
        );
        assert!(states(&c).contains(&("test".into(), a.into(), State::Gone)));
        // Gone is final until it registers again; it is no longer probed.
        assert!(c.tracked[&key("test", "echo", a)].gone);
        let s = c.snapshot();
        assert_eq!(s.products[0].services[0].endpoints[0].left_ms, Some(3_000));

        // Shown for `gone_for`, then dropped; its service stays listed.
        c.apply_registry(tree(&[("test", "echo", &[b])]), 62_999);
        assert_eq!(states(&c).len(), 2);
        c.apply_registry(tree(&[("test", "echo", &[])]), 63_000);
        assert_eq!(states(&c), vec![("test".into(), b.into(), State::Gone)]);
        let s = c.snapshot();
        assert_eq!(s.products[0].services[0].service, "echo");
    }

    #[tokio::test]
    async fn a_tls_endpoint_is_not_probed_without_keys_nor_shown_down() {
        let mut c = collector();
        let closed = format!("127.0.0.1:{}", rpc_testkit::free_port());
        let mut tree = tree(&[("test", "echo", &[&closed])]);
        for ep in tree.get_mut("test").unwrap().get_mut("echo").unwrap() {
            ep.tls = true;
        }
        c.apply_registry(tree, 1_000);
        c.probe_all().await;
        let s = c.snapshot();
        let ep = &s.products[0].services[0].endpoints[0];
        assert_eq!(ep.state, State::Unknown);
        assert_eq!(ep.checked_ms, None, "not dialled");
        assert!(
            ep.error.as_deref().unwrap().contains("--tls-cert"),
            "{:?}",
            ep.error
        );
    }

    #[test]
    fn an_endpoint_that_comes_back_is_judged_afresh() {
        let mut c = collector();
        let a = "127.0.0.1:5555";
        c.apply_registry(tree(&[("test", "echo", &[a])]), 0);
        c.apply_registry(tree(&[]), 1_000);
        c.apply_probe(&key("test", "echo", a), Err("gone".into()), 1_001);
        assert_eq!(states(&c)[0].2, State::Gone);
        c.apply_registry(tree(&[("test", "echo", &[a])]), 2_000);
        assert_eq!(states(&c)[0].2, State::Unknown);
        assert_eq!(
            c.snapshot().products[0].services[0].endpoints[0].left_ms,
            None
        );
    }

    #[test]
    fn a_failed_registry_read_changes_nothing_but_the_error() {
        let mut c = collector();
        c.apply_registry(tree(&[("test", "echo", &["127.0.0.1:5555"])]), 0);
        c.registry_error = Some("ZooKeeper did not answer".into());
        let s = c.snapshot();
        assert_eq!(s.registry_read_ms, Some(0));
        assert_eq!(
            s.registry_error.as_deref(),
            Some("ZooKeeper did not answer")
        );
        assert_eq!(states(&c)[0].2, State::Unknown);
    }

    #[test]
    fn products_are_isolated_and_sorted() {
        let mut c = collector();
        c.apply_registry(
            tree(&[
                ("test", "echo", &["127.0.0.1:2"]),
                ("online_a", "echo", &["10.0.0.1:1"]),
                ("test", "audit", &[]),
            ]),
            0,
        );
        let s = c.snapshot();
        let names: Vec<(&str, Vec<&str>)> = s
            .products
            .iter()
            .map(|p| {
                (
                    p.product.as_str(),
                    p.services.iter().map(|s| s.service.as_str()).collect(),
                )
            })
            .collect();
        assert_eq!(
            names,
            vec![("online_a", vec!["echo"]), ("test", vec!["audit", "echo"])]
        );
    }

    #[test]
    fn a_drain_mark_in_the_registry_shows_as_draining() {
        let mut c = collector();
        let a = "127.0.0.1:5555";
        let mut t = tree(&[("test", "echo", &[a])]);
        t.get_mut("test").unwrap().get_mut("echo").unwrap()[0].draining = true;
        c.apply_registry(t, 0);
        c.apply_probe(&key("test", "echo", a), Ok(100), 1);
        let s = c.snapshot();
        let ep = &s.products[0].services[0].endpoints[0];
        assert_eq!((ep.state, ep.drained), (State::Draining, true));
    }

    #[test]
    fn status_pages_feed_series_and_proxy_views() {
        let mut c = collector();
        assert_eq!(c.sources.len(), 1, "one page however it is written");
        let a = "127.0.0.1:5555";
        c.apply_registry(tree(&[("test", "echo", &[a])]), 0);
        let page = |at_ms, requests| {
            let status = serde_json::json!({"endpoints": [
                {"service": "echo", "endpoint": a, "state": "Up", "outstanding": 0, "latency_us": 500}
            ]});
            let text = format!("rpc_proxy_requests_total{{service=\"echo\"}} {requests}\n");
            status::interpret("127.0.0.1:1", &status, &crate::prom::parse(&text), at_ms)
        };
        c.sources[0].apply(page(1_000, 10), 600_000);
        c.sources[0].apply(page(3_000, 50), 600_000);
        let s = c.snapshot();
        assert_eq!(s.sources[0].kind, Kind::Proxy);
        assert!(s.sources[0].reachable);
        let echo = s.traffic.iter().find(|t| t.service == "echo").unwrap();
        assert_eq!(echo.samples.len(), 1);
        assert_eq!(echo.samples[0].rate, 20.0);
        assert_eq!(echo.samples[0].latency_ms, Some(0.5));
        let ep = &s.products[0].services[0].endpoints[0];
        assert_eq!(ep.proxies.len(), 1);
        assert_eq!(ep.proxies[0].state, "Up");

        // An operator drains it: the proxy says so, and it is draining.
        let status = serde_json::json!({"endpoints": [
            {"service": "echo", "endpoint": a, "state": "Up", "outstanding": 0,
             "latency_us": 500, "draining": true}
        ]});
        let drained = status::interpret("127.0.0.1:1", &status, &[], 4_000);
        c.sources[0].apply(drained, 600_000);
        assert_eq!(states(&c)[0].2, State::Unknown, "not probed yet");
        c.apply_probe(&key("test", "echo", a), Ok(100), 4_001);
        let s = c.snapshot();
        let ep = &s.products[0].services[0].endpoints[0];
        assert_eq!((ep.state, ep.drained), (State::Draining, true));

        c.sources[0].apply(Err("connect: refused".into()), 600_000);
        let s = c.snapshot();
        assert!(!s.sources[0].reachable);
        assert!(s.products[0].services[0].endpoints[0].proxies.is_empty());
        // The history survives an unreadable page.
        assert_eq!(
            s.traffic
                .iter()
                .find(|t| t.service == "echo")
                .unwrap()
                .samples
                .len(),
            1
        );
    }
}
