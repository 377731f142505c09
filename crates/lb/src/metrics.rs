//! What the LB exposes about itself on `metrics_address` (same page as the
//! proxy's: Prometheus `/metrics`, `/status` JSON, dashboard at `/`).
//!
//! Counting stays off the request path's shared state:
//! - a proxy connection tallies how its answers ended in a local array, and
//!   per method (with each call's latency), and adds the batch to the
//!   shared [`Requests`] counters and [`Methods`] once per wake-up;
//! - a worker connection's task is the only writer of its
//!   [`WorkerCounters`] (replies served, latency, heartbeats): plain loads
//!   and stores, no locked instruction, no lock; the dispatcher keeps a
//!   handle beside the worker's slot and folds them into its totals when
//!   the worker leaves;
//! - queue length, in-flight counts and worker states are read from the
//!   dispatcher when scraped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use rpc_config::methods::{MethodCollector, MethodId, MethodTally, Methods};
use rpc_config::status_page::{escape, About, Cell, Dashboard, Recent, StatusPage};
use rpc_engine::seq::SeqHash;
use tokio::time::Instant;

use crate::dispatch::{Dispatcher, Snapshot};
use crate::supervise::{SlotView, Supervisor};

/// A counter written by one task only (a load and a store, no locked
/// instruction) and read by anyone.
#[derive(Debug, Default)]
pub struct Single(AtomicU64);

impl Single {
    /// Only the owning task may call this.
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// How a request ended, the label of `rpc_lb_requests_total`.
#[derive(Debug, Clone, Copy)]
pub enum Ending {
    /// The worker's REPLY.
    Ok,
    /// The worker's EXCEPTION.
    Exception,
    /// Deadline passed before the request was sent to a worker.
    TimeoutInQueue,
    /// Sent, and the worker did not answer by the deadline.
    Timeout,
    /// Turned away: the queue was full.
    RejectedQueueFull,
    /// Sent to a worker whose connection then failed (or the LB stopped).
    WorkerLost,
    /// A oneway call handed to the dispatcher (nothing comes back).
    Oneway,
}

impl Ending {
    /// The `outcome` label of the counters (and of the LB's spans).
    pub fn label(self) -> &'static str {
        ENDINGS[self as usize].1
    }
}

const ENDINGS: [(Ending, &str); 7] = [
    (Ending::Ok, "ok"),
    (Ending::Exception, "exception"),
    (Ending::TimeoutInQueue, "timeout_in_queue"),
    (Ending::Timeout, "timeout"),
    (Ending::RejectedQueueFull, "rejected_queue_full"),
    (Ending::WorkerLost, "worker_lost"),
    (Ending::Oneway, "oneway"),
];

/// A proxy connection's counts for one batch, added to [`Requests`] (and
/// per method to [`Methods`]) at its end.
#[derive(Debug)]
pub struct Tally {
    ends: [u64; ENDINGS.len()],
    methods: MethodTally,
    shared: Arc<Methods>,
    service: Arc<str>,
    /// Calls in flight by the seqid they came with (unique among the
    /// connection's calls in flight, SPEC §4): deadline and method.
    inflight: HashMap<i32, (Instant, MethodId), SeqHash>,
    /// A call arrived this long before its deadline.
    rpc_timeout: Duration,
}

impl Tally {
    /// Calls of `service` count into `shared`.
    pub fn new(shared: Arc<Methods>, service: Arc<str>, rpc_timeout: Duration) -> Tally {
        Tally {
            ends: [0; ENDINGS.len()],
            methods: MethodTally::default(),
            shared,
            service,
            inflight: HashMap::default(),
            rpc_timeout,
        }
    }

    fn method(&mut self, name: &[u8]) -> MethodId {
        let (shared, service) = (&self.shared, &self.service);
        self.methods
            .id(name, || shared.resolve(service.as_bytes(), name))
    }

    /// A call of `method` (bare name) with `deadline` goes to a worker.
    pub fn call(&mut self, seqid: i32, method: &[u8], deadline: Instant) {
        let id = self.method(method);
        self.inflight.insert(seqid, (deadline, id));
    }

    /// A oneway call of `method` goes to a worker.
    pub fn oneway(&mut self, method: &[u8]) {
        let id = self.method(method);
        self.methods.record(id, Ending::Oneway as usize, None);
        self.count(Ending::Oneway);
    }

    /// The call `seqid` (named `name`) ended `e` at `now`.
    pub fn answered(&mut self, seqid: i32, name: &[u8], e: Ending, now: Instant) {
        self.count(e);
        let (id, latency) = match self.inflight.remove(&seqid) {
            Some((deadline, id)) => {
                let arrived = deadline.checked_sub(self.rpc_timeout).unwrap_or(now);
                (id, Some(now.saturating_duration_since(arrived)))
            }
            // Its seqid was reused by a later call in flight: counted, untimed.
            None => (self.method(name), None),
        };
        self.methods.record(id, e as usize, latency);
    }

    fn count(&mut self, e: Ending) {
        self.ends[e as usize] += 1;
    }
}

/// Requests by how they ended, over every proxy connection.
#[derive(Debug, Default)]
pub struct Requests([AtomicU64; ENDINGS.len()]);

impl Requests {
    /// Adds and clears `tally` (its per-method counts too).
    pub fn add(&self, tally: &mut Tally) {
        for (total, n) in self.0.iter().zip(tally.ends.iter_mut()) {
            if *n > 0 {
                total.fetch_add(std::mem::take(n), Ordering::Relaxed);
            }
        }
        tally.methods.flush();
    }

    pub fn get(&self, e: Ending) -> u64 {
        self.0[e as usize].load(Ordering::Relaxed)
    }
}

/// Upper bounds of the latency buckets, µs; one more bucket holds the rest.
pub const LATENCY_BOUNDS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];
const BUCKETS: usize = LATENCY_BOUNDS_US.len() + 1;

/// What one worker connection did. Written by that connection's task only.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    /// The worker's address as the LB sees it.
    pub peer: String,
    /// The worker's process id once known (0 until then).
    pub pid: std::sync::atomic::AtomicU32,
    /// Replies (REPLY or EXCEPTION) received, late ones included.
    pub served: Single,
    pub heartbeats_sent: Single,
    /// Heartbeat intervals that passed without a frame from the worker.
    pub heartbeats_missed: Single,
    /// Read-to-reply latency of the answers delivered, per bucket.
    latency: [Single; BUCKETS],
    latency_sum_us: Single,
}

impl WorkerCounters {
    pub fn new(peer: String) -> WorkerCounters {
        WorkerCounters {
            peer,
            ..Default::default()
        }
    }

    /// One answered request took `us` from its arrival at the LB.
    pub fn observe_latency(&self, us: u64) {
        self.latency[LATENCY_BOUNDS_US.partition_point(|&b| b < us)].add(1);
        self.latency_sum_us.add(us);
    }
}

/// [`WorkerCounters`] summed over workers (and over the ones gone).
#[derive(Debug, Default, Clone)]
pub struct WorkerTotals {
    pub served: u64,
    pub heartbeats_sent: u64,
    pub heartbeats_missed: u64,
    pub latency: [u64; BUCKETS],
    pub latency_sum_us: u64,
}

impl WorkerTotals {
    pub fn add(&mut self, c: &WorkerCounters) {
        self.served += c.served.get();
        self.heartbeats_sent += c.heartbeats_sent.get();
        self.heartbeats_missed += c.heartbeats_missed.get();
        for (t, b) in self.latency.iter_mut().zip(&c.latency) {
            *t += b.get();
        }
        self.latency_sum_us += c.latency_sum_us.get();
    }

    pub fn latency_count(&self) -> u64 {
        self.latency.iter().sum()
    }
}

/// The LB's own counters, beside what the dispatcher knows.
#[derive(Debug, Default)]
pub struct Metrics {
    pub requests: Requests,
    /// Calls per method (the status page, open-falcon).
    pub methods: Arc<Methods>,
    /// The endpoint is in the registry.
    pub registered: AtomicBool,
    pub proxy_connections: AtomicI64,
}

/// The LB's status page (cheap to clone: one per scrape).
#[derive(Clone)]
pub struct Page {
    service: Arc<str>,
    metrics: Arc<Metrics>,
    dispatcher: Arc<Dispatcher>,
    supervisor: Option<Arc<Supervisor>>,
    about: Arc<About>,
    recent: Arc<Recent>,
}

impl Page {
    pub fn new(
        service: Arc<str>,
        metrics: Arc<Metrics>,
        dispatcher: Arc<Dispatcher>,
        supervisor: Option<Arc<Supervisor>>,
        about: About,
    ) -> Page {
        let recent = Recent::new(
            metrics.methods.clone(),
            &[Ending::Ok as usize, Ending::Oneway as usize],
        );
        Page {
            service,
            metrics,
            dispatcher,
            supervisor,
            about: Arc::new(about),
            recent: Arc::new(recent),
        }
    }

    fn supervised(&self) -> Vec<SlotView> {
        self.supervisor
            .as_ref()
            .map(|s| s.views())
            .unwrap_or_default()
    }
}

/// Encodes one unlabelled counter or gauge.
fn one(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: impl EncodeMetric,
) -> std::fmt::Result {
    metric.encode(e.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl std::fmt::Debug for Page {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Page")
            .field("service", &self.service)
            .finish()
    }
}

impl Collector for Page {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let s = self.dispatcher.snapshot();
        self.encode_requests(&mut e, &s)?;
        self.encode_totals(&mut e, &s)?;
        encode_workers(&mut e, &s)?;
        encode_supervised(&mut e, &s, &self.supervised())
    }
}

impl Page {
    /// Requests by how they ended, and their latency histogram.
    fn encode_requests(&self, e: &mut DescriptorEncoder, s: &Snapshot) -> std::fmt::Result {
        let mut f = e.encode_descriptor(
            "requests",
            "Requests from proxies, by how they ended",
            None,
            MetricType::Counter,
        )?;
        for (ending, label) in ENDINGS {
            ConstCounter::new(self.metrics.requests.get(ending))
                .encode(f.encode_family(&[("outcome", label)])?)?;
        }
        let mut buckets: Vec<(f64, u64)> = LATENCY_BOUNDS_US
            .iter()
            .map(|&b| b as f64 / 1e6)
            .chain([f64::MAX])
            .zip(s.totals.latency)
            .collect();
        buckets.truncate(BUCKETS);
        e.encode_descriptor(
            "request_duration",
            "Time from a request's arrival to its worker's reply (answered requests)",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?
        .encode_histogram::<NoLabelSet>(
            s.totals.latency_sum_us as f64 / 1e6,
            s.totals.latency_count(),
            &buckets,
            None,
        )
    }

    /// The LB-wide gauges and counters.
    fn encode_totals(&self, e: &mut DescriptorEncoder, s: &Snapshot) -> std::fmt::Result {
        let m = &self.metrics;
        let serving = s.workers.iter().filter(|w| w.serving).count() as i64;
        let gauges = [
            (
                "queue_length",
                "Requests waiting for a free worker slot",
                s.queued as i64,
            ),
            (
                "queue_limit",
                "Most requests that may wait (queue_size)",
                s.queue_limit as i64,
            ),
            (
                "registered",
                "1 while the LB's endpoint is in the registry",
                i64::from(m.registered.load(Ordering::Relaxed)),
            ),
            (
                "proxy_connections",
                "Proxy connections open",
                m.proxy_connections.load(Ordering::Relaxed),
            ),
            ("workers", "Workers connected and taking requests", serving),
        ];
        for (name, help, v) in gauges {
            one(e, name, help, ConstGauge::new(v))?;
        }
        let counters = [
            (
                "worker_connections",
                "Worker connections accepted since start",
                s.worker_connections,
            ),
            (
                "heartbeats_sent",
                "Heartbeats sent to workers",
                s.totals.heartbeats_sent,
            ),
            (
                "heartbeats_missed",
                "Heartbeat intervals a worker let pass without a frame",
                s.totals.heartbeats_missed,
            ),
        ];
        for (name, help, v) in counters {
            one(e, name, help, ConstCounter::new(v))?;
        }
        Ok(())
    }
}

/// One series per supervised worker slot, labelled by slot and pid.
fn encode_supervised(
    e: &mut DescriptorEncoder,
    s: &Snapshot,
    views: &[SlotView],
) -> std::fmt::Result {
    if views.is_empty() {
        return Ok(());
    }
    type Value = fn(&SlotView, &Snapshot) -> f64;
    let series: [(&str, &str, MetricType, Value); 3] = [
        (
            "supervised_worker_age_seconds",
            "How long the slot's worker process has been running",
            MetricType::Gauge,
            |v, _| age(v).as_secs_f64(),
        ),
        (
            "supervised_worker_served",
            "Calls answered by the slot's current worker process",
            MetricType::Counter,
            |v, s| served_by(s, v.pid) as f64,
        ),
        (
            "supervised_worker_restarts",
            "Unplanned exits of the slot's workers, each restarted",
            MetricType::Counter,
            |v, _| v.restarts as f64,
        ),
    ];
    for (name, help, kind, value) in series {
        let mut f = e.encode_descriptor(name, help, None, kind)?;
        for v in views {
            let (slot, pid) = (
                v.slot.to_string(),
                v.pid.map(|p| p.to_string()).unwrap_or_default(),
            );
            let labels = [("slot", slot.as_str()), ("pid", pid.as_str())];
            let enc = f.encode_family(&labels)?;
            match kind {
                MetricType::Counter => ConstCounter::new(value(v, s) as u64).encode(enc)?,
                _ => ConstGauge::new(value(v, s)).encode(enc)?,
            }
        }
    }
    Ok(())
}

/// One series per connected worker, labelled by worker id and peer.
fn encode_workers(e: &mut DescriptorEncoder, s: &Snapshot) -> std::fmt::Result {
    type Value = fn(&crate::dispatch::WorkerView) -> u64;
    let per_worker: [(&str, &str, MetricType, Value); 4] = [
        (
            "worker_up",
            "1 while the worker takes requests, 0 once it announced STOP",
            MetricType::Gauge,
            |w| u64::from(w.serving),
        ),
        (
            "worker_capacity",
            "Requests a worker may have in flight",
            MetricType::Gauge,
            |w| w.capacity as u64,
        ),
        (
            "worker_inflight",
            "Requests handed to the worker and not answered yet",
            MetricType::Gauge,
            |w| w.inflight as u64,
        ),
        (
            "worker_served",
            "Replies received from the worker",
            MetricType::Counter,
            |w| w.served,
        ),
    ];
    for (name, help, kind, value) in per_worker {
        let mut f = e.encode_descriptor(name, help, None, kind)?;
        for w in &s.workers {
            let id = w.id.to_string();
            let labels = [("worker", id.as_str()), ("peer", w.peer.as_str())];
            let enc = f.encode_family(&labels)?;
            match kind {
                MetricType::Counter => ConstCounter::new(value(w)).encode(enc)?,
                _ => ConstGauge::new(value(w) as i64).encode(enc)?,
            }
        }
    }
    Ok(())
}

/// The `/status` and dashboard view of one worker.
fn state(w: &crate::dispatch::WorkerView) -> &'static str {
    match (w.serving, w.suspect) {
        (false, _) => "stopping",
        (true, true) => "suspect",
        (true, false) => "serving",
    }
}

impl Page {
    fn status_of(&self, s: &Snapshot) -> serde_json::Value {
        let m = &self.metrics;
        let requests: serde_json::Map<String, serde_json::Value> = ENDINGS
            .iter()
            .map(|&(e, label)| (label.to_string(), m.requests.get(e).into()))
            .collect();
        let workers: Vec<serde_json::Value> = s
            .workers
            .iter()
            .map(|w| {
                serde_json::json!({
                    "id": w.id,
                    "peer": w.peer,
                    "pid": w.pid,
                    "state": state(w),
                    "capacity": w.capacity,
                    "inflight": w.inflight,
                    "served": w.served,
                    "heartbeats_sent": w.heartbeats_sent,
                    "heartbeats_missed": w.heartbeats_missed,
                })
            })
            .collect();
        let count = s.totals.latency_count();
        let traffic: Vec<_> = self.recent.traffic().iter().map(|t| t.to_json()).collect();
        serde_json::json!({
            "about": self.about.to_json(),
            "traffic": traffic,
            "service": &*self.service,
            "registered": m.registered.load(Ordering::Relaxed),
            "proxy_connections": m.proxy_connections.load(Ordering::Relaxed),
            "queue": { "length": s.queued, "limit": s.queue_limit },
            "requests": requests,
            "latency": {
                "count": count,
                "mean_us": s.totals.latency_sum_us.checked_div(count).unwrap_or(0),
            },
            "heartbeats": {
                "sent": s.totals.heartbeats_sent,
                "missed": s.totals.heartbeats_missed,
            },
            "worker_connections": s.worker_connections,
            "workers": workers,
            "supervised": supervised_json(&self.supervised(), s),
        })
    }
}

impl Metrics {
    /// `max_methods`: methods with series of their own.
    pub fn new(max_methods: usize) -> Metrics {
        Metrics {
            methods: Arc::new(Methods::new(max_methods)),
            ..Metrics::default()
        }
    }
}

impl StatusPage for Page {
    fn metrics(&self) -> String {
        let mut registry = Registry::with_prefix("rpc_lb");
        registry.register_collector(Box::new(self.clone()));
        let ends = ENDINGS.map(|(_, label)| label);
        let methods = MethodCollector::new(self.metrics.methods.clone(), ends);
        registry.register_collector(Box::new(methods));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }

    fn status(&self) -> serde_json::Value {
        self.status_of(&self.dispatcher.snapshot())
    }

    fn dashboard(&self) -> String {
        let s = self.dispatcher.snapshot();
        let m = &self.metrics;
        let r = |e| m.requests.get(e);
        let summary = format!(
            "Service {}, {}. {} proxy connections. Queue {} of {}. Requests: {} ok, {} exception, \
             {} timed out in the queue, {} timed out at a worker, {} rejected (queue full), \
             {} lost with a worker, {} oneway. Heartbeats: {} sent, {} missed.",
            escape(&self.service),
            if m.registered.load(Ordering::Relaxed) {
                "registered"
            } else {
                "not registered"
            },
            m.proxy_connections.load(Ordering::Relaxed),
            s.queued,
            s.queue_limit,
            r(Ending::Ok),
            r(Ending::Exception),
            r(Ending::TimeoutInQueue),
            r(Ending::Timeout),
            r(Ending::RejectedQueueFull),
            r(Ending::WorkerLost),
            r(Ending::Oneway),
            s.totals.heartbeats_sent,
            s.totals.heartbeats_missed,
        );
        let mut page = Dashboard::new(
            "rpc-lb",
            ".serving{color:#080}.stopping{color:#b60}",
            &summary,
        );
        page.about(&self.about);
        page.traffic(&self.recent.traffic());
        page.heading("Workers");
        page.table(&[
            "worker",
            "peer",
            "pid",
            "state",
            "capacity",
            "in flight",
            "served",
            "heartbeats missed",
        ]);
        for w in &s.workers {
            page.row([
                Cell::Text(w.id.to_string()),
                Cell::Text(w.peer.clone()),
                Cell::Text(w.pid.map(|p| p.to_string()).unwrap_or_default()),
                Cell::State(state(w).into()),
                Cell::Text(w.capacity.to_string()),
                Cell::Text(w.inflight.to_string()),
                Cell::Text(w.served.to_string()),
                Cell::Text(w.heartbeats_missed.to_string()),
            ]);
        }
        let supervised = self.supervised();
        if !supervised.is_empty() {
            page.table(&[
                "slot",
                "pid",
                "age",
                "served",
                "restarts",
                "replaced",
                "last exit",
            ]);
            for v in &supervised {
                page.row([
                    Cell::Text(v.slot.to_string()),
                    Cell::Text(v.pid.map(|p| p.to_string()).unwrap_or_else(|| "—".into())),
                    Cell::Text(format!("{:.0} s", age(v).as_secs_f64())),
                    Cell::Text(served_by(&s, v.pid).to_string()),
                    Cell::Text(v.restarts.to_string()),
                    Cell::Text(v.replaced.to_string()),
                    Cell::Text(v.last_exit.clone().unwrap_or_default()),
                ]);
            }
        }
        page.finish()
    }
}

/// How long the slot's current worker has been running.
fn age(v: &SlotView) -> std::time::Duration {
    v.started.map(|t| t.elapsed()).unwrap_or_default()
}

/// Calls answered by the worker process `pid`, over its connections.
fn served_by(s: &Snapshot, pid: Option<u32>) -> u64 {
    let Some(pid) = pid else { return 0 };
    s.workers
        .iter()
        .filter(|w| w.pid == Some(pid))
        .map(|w| w.served)
        .sum()
}

fn supervised_json(views: &[SlotView], s: &Snapshot) -> serde_json::Value {
    views
        .iter()
        .map(|v| {
            serde_json::json!({
                "slot": v.slot,
                "pid": v.pid,
                "age_s": age(v).as_secs_f64(),
                "served": served_by(s, v.pid),
                "restarts": v.restarts,
                "replaced": v.replaced,
                "last_exit": v.last_exit,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_lands_in_the_first_bucket_that_holds_it() {
        let c = WorkerCounters::default();
        for us in [0, 100, 101, 10_000_000, 10_000_001] {
            c.observe_latency(us);
        }
        let mut t = WorkerTotals::default();
        t.add(&c);
        assert_eq!((t.latency[0], t.latency[1]), (2, 1));
        assert_eq!((t.latency[BUCKETS - 2], t.latency[BUCKETS - 1]), (1, 1));
        assert_eq!(t.latency_count(), 5);
        assert_eq!(t.latency_sum_us, 20_000_202);
    }

    fn tally(methods: &Arc<Methods>) -> Tally {
        Tally::new(methods.clone(), "svc".into(), Duration::from_secs(1))
    }

    #[test]
    fn a_tally_is_added_once_and_cleared() {
        let r = Requests::default();
        let mut t = tally(&Arc::default());
        let now = Instant::now();
        t.answered(1, b"m", Ending::Ok, now);
        t.answered(2, b"m", Ending::Ok, now);
        t.answered(3, b"m", Ending::WorkerLost, now);
        r.add(&mut t);
        r.add(&mut t);
        assert_eq!((r.get(Ending::Ok), r.get(Ending::WorkerLost)), (2, 1));
        assert_eq!(r.get(Ending::Exception), 0);
    }

    #[test]
    fn calls_are_counted_per_method_with_their_latency() {
        let methods = Arc::new(Methods::new(1));
        let (r, mut t) = (Requests::default(), tally(&methods));
        let arrived = Instant::now();
        let deadline = arrived + Duration::from_secs(1);
        t.call(7, b"get", deadline);
        t.call(8, b"put", deadline);
        t.oneway(b"get");
        t.answered(
            8,
            b"put",
            Ending::Exception,
            arrived + Duration::from_millis(3),
        );
        t.answered(7, b"whatever the worker named it", Ending::Ok, arrived);
        // A seqid not in flight: counted under its name, untimed.
        t.answered(9, b"get", Ending::Timeout, arrived);
        r.add(&mut t);
        let all = methods.all();
        let names: Vec<_> = all.iter().map(|m| (m.service(), m.method())).collect();
        assert_eq!(names, [("svc", "get"), ("svc", "other")]);
        let (get, other) = (all[0].snapshot(), all[1].snapshot());
        let (ok, oneway, timeout) = (
            Ending::Ok as usize,
            Ending::Oneway as usize,
            Ending::Timeout as usize,
        );
        assert_eq!(
            (
                get.outcomes[ok],
                get.outcomes[oneway],
                get.outcomes[timeout]
            ),
            (1, 1, 1)
        );
        assert_eq!((get.timed(), get.latency_sum_us), (1, 0));
        assert_eq!(other.outcomes[Ending::Exception as usize], 1);
        assert_eq!((other.timed(), other.latency_sum_us), (1, 3000));
        assert!(t.inflight.is_empty());
    }
}
