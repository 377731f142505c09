//! Calls per service and method (SPEC §8): how many ended which way, and
//! how long they took, for the status page and the open-falcon push.
//!
//! The request path neither locks nor allocates for it. Each connection
//! keeps a [`MethodTally`]: its own counts, found by the name bytes it read
//! (one hash lookup), added to the shared [`MethodStats`] once per wake-up.
//! The shared [`Methods`] table is locked only when a connection meets a
//! name for the first time.
//!
//! Names come from clients, so what they become is bounded: a label of at
//! most [`MAX_NAME`] bytes from `[A-Za-z0-9_.-]` (anything else becomes
//! `_`), at most `metrics_max_methods` methods per service (later ones are
//! counted together as [`OTHER`]) and at most [`MAX_SERVICES`] services.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

/// Methods per service with a series of their own, by default.
pub const DEFAULT_MAX_METHODS: usize = 64;
/// Services with series of their own; later ones share [`OTHER`].
pub const MAX_SERVICES: usize = 1024;
/// Longest label made from a name, bytes.
pub const MAX_NAME: usize = 64;
/// The label of the methods (or services) beyond the limit.
pub const OTHER: &str = "other";
/// Most outcomes a binary may distinguish.
pub const MAX_OUTCOMES: usize = 8;
/// Upper bounds of the latency buckets, µs; one more bucket holds the rest.
pub const LATENCY_BOUNDS_US: [u64; 17] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];
pub const BUCKETS: usize = LATENCY_BOUNDS_US.len() + 1;
/// Names a connection remembers; beyond them, a new name is looked up in
/// the shared table each time (a client making up names pays, no one else).
const LOCAL_NAMES: usize = 256;

/// `raw` as a label: borrowed when it already is one.
pub fn label(raw: &[u8]) -> Cow<'_, str> {
    let fits = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.');
    if raw.is_empty() {
        return Cow::Borrowed("_");
    }
    if raw.len() <= MAX_NAME && raw.iter().all(fits) {
        return Cow::Borrowed(std::str::from_utf8(raw).expect("ASCII is UTF-8"));
    }
    let mapped = raw.iter().take(MAX_NAME);
    Cow::Owned(
        mapped
            .map(|b| if fits(b) { *b as char } else { '_' })
            .collect(),
    )
}

fn bucket(us: u64) -> usize {
    LATENCY_BOUNDS_US.partition_point(|&b| b < us)
}

/// The shared counts of one service's method.
#[derive(Debug)]
pub struct MethodStats {
    service: Arc<str>,
    method: Box<str>,
    outcomes: [AtomicU64; MAX_OUTCOMES],
    buckets: [AtomicU64; BUCKETS],
    latency_sum_us: AtomicU64,
}

/// [`MethodStats`] read at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Calls by outcome (the binary's outcome numbers).
    pub outcomes: [u64; MAX_OUTCOMES],
    /// Calls with a latency, per bucket of [`LATENCY_BOUNDS_US`].
    pub buckets: [u64; BUCKETS],
    pub latency_sum_us: u64,
}

impl Snapshot {
    pub fn calls(&self) -> u64 {
        self.outcomes.iter().sum()
    }

    /// Calls whose latency was measured (oneway calls have none).
    pub fn timed(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

impl MethodStats {
    fn new(service: Arc<str>, method: &str) -> MethodStats {
        MethodStats {
            service,
            method: method.into(),
            outcomes: Default::default(),
            buckets: Default::default(),
            latency_sum_us: AtomicU64::new(0),
        }
    }

    /// The service's label.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The method's label ([`OTHER`] for the methods beyond the limit).
    pub fn method(&self) -> &str {
        &self.method
    }

    pub fn snapshot(&self) -> Snapshot {
        let read = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Snapshot {
            outcomes: self.outcomes.each_ref().map(read),
            buckets: self.buckets.each_ref().map(read),
            latency_sum_us: read(&self.latency_sum_us),
        }
    }
}

/// Every service's methods seen by one binary.
#[derive(Debug)]
pub struct Methods {
    max_methods: usize,
    services: Mutex<BTreeMap<Box<str>, Service>>,
}

#[derive(Debug)]
struct Service {
    name: Arc<str>,
    methods: BTreeMap<Box<str>, Arc<MethodStats>>,
}

impl Default for Methods {
    fn default() -> Self {
        Methods::new(DEFAULT_MAX_METHODS)
    }
}

impl Methods {
    /// At most `max_methods` methods per service get series of their own.
    pub fn new(max_methods: usize) -> Methods {
        Methods {
            max_methods,
            services: Mutex::default(),
        }
    }

    /// The counts a call of `service`'s `method` adds to (made on first
    /// use, within the limits). Locks the table: call it once per name per
    /// connection ([`MethodTally::id`]), not per request.
    pub fn resolve(&self, service: &[u8], method: &[u8]) -> Arc<MethodStats> {
        let (service, method) = (label(service), label(method));
        let mut services = self.services.lock().unwrap_or_else(PoisonError::into_inner);
        let key = match services.contains_key(&*service) || services.len() < MAX_SERVICES {
            true => service,
            false => Cow::Borrowed(OTHER),
        };
        if !services.contains_key(&*key) {
            let name: Arc<str> = key.as_ref().into();
            let methods = BTreeMap::new();
            services.insert(key.as_ref().into(), Service { name, methods });
        }
        let s = services.get_mut(&*key).expect("just made");
        if let Some(stats) = s.methods.get(&*method) {
            return stats.clone();
        }
        let named = s.methods.len() - usize::from(s.methods.contains_key(OTHER));
        let method = if named < self.max_methods {
            &*method
        } else {
            OTHER
        };
        let service = &s.name;
        s.methods
            .entry(method.into())
            .or_insert_with(|| Arc::new(MethodStats::new(service.clone(), method)))
            .clone()
    }

    /// Every method's counts, by service then method.
    pub fn all(&self) -> Vec<Arc<MethodStats>> {
        let services = self.services.lock().unwrap_or_else(PoisonError::into_inner);
        let methods = services.values().flat_map(|s| s.methods.values());
        methods.cloned().collect()
    }
}

/// Which of a connection's methods a call was (from [`MethodTally::id`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodId(u32);

/// One connection's counts since its last [`MethodTally::flush`].
#[derive(Debug, Default)]
pub struct MethodTally {
    /// Names as read (whatever key the connection chose) → entry.
    names: HashMap<Box<[u8]>, u32, BuildHasherDefault<NameHasher>>,
    /// One per shared [`MethodStats`] this connection reached.
    entries: Vec<Entry>,
    /// Entries with counts to add.
    dirty: Vec<u32>,
}

#[derive(Debug)]
struct Entry {
    stats: Arc<MethodStats>,
    outcomes: [u64; MAX_OUTCOMES],
    buckets: [u64; BUCKETS],
    latency_sum_us: u64,
    dirty: bool,
}

impl MethodTally {
    /// The entry of the name `key`; `resolve` finds its shared counts the
    /// first time (see [`Methods::resolve`]).
    pub fn id(&mut self, key: &[u8], resolve: impl FnOnce() -> Arc<MethodStats>) -> MethodId {
        if let Some(&i) = self.names.get(key) {
            return MethodId(i);
        }
        let stats = resolve();
        // Names past a limit share an entry (`other`, or one label).
        let i = match self
            .entries
            .iter()
            .position(|e| Arc::ptr_eq(&e.stats, &stats))
        {
            Some(i) => i as u32,
            None => {
                self.entries.push(Entry {
                    stats,
                    outcomes: [0; MAX_OUTCOMES],
                    buckets: [0; BUCKETS],
                    latency_sum_us: 0,
                    dirty: false,
                });
                (self.entries.len() - 1) as u32
            }
        };
        if self.names.len() < LOCAL_NAMES {
            self.names.insert(key.into(), i);
        }
        MethodId(i)
    }

    /// One call of `id` ended with `outcome` (below [`MAX_OUTCOMES`]),
    /// `latency` after it arrived (none for a oneway call).
    pub fn record(&mut self, id: MethodId, outcome: usize, latency: Option<Duration>) {
        let e = &mut self.entries[id.0 as usize];
        e.outcomes[outcome] += 1;
        if let Some(d) = latency {
            let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
            e.buckets[bucket(us)] += 1;
            e.latency_sum_us = e.latency_sum_us.wrapping_add(us);
        }
        if !e.dirty {
            e.dirty = true;
            self.dirty.push(id.0);
        }
    }

    /// Adds the counts to the shared ones and clears them.
    pub fn flush(&mut self) {
        for i in self.dirty.drain(..) {
            let e = &mut self.entries[i as usize];
            let add = |total: &AtomicU64, n: &mut u64| {
                if *n > 0 {
                    total.fetch_add(std::mem::take(n), Ordering::Relaxed);
                }
            };
            for (t, n) in e.stats.outcomes.iter().zip(&mut e.outcomes) {
                add(t, n);
            }
            for (t, n) in e.stats.buckets.iter().zip(&mut e.buckets) {
                add(t, n);
            }
            add(&e.stats.latency_sum_us, &mut e.latency_sum_us);
            e.dirty = false;
        }
    }
}

impl Drop for MethodTally {
    fn drop(&mut self) {
        self.flush();
    }
}

/// A multiplicative hash for names (a connection's own table, bounded in
/// size: worst-case collisions cost only that connection).
#[derive(Default)]
pub struct NameHasher(u64);

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            let mixed = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
            self.0 = mixed.wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The per-method series of a binary's `/metrics`: `{prefix}_method_requests_total
/// {service,method,outcome}` and the `{prefix}_method_latency_seconds
/// {service,method}` histogram (the prefix is the registry's).
#[derive(Debug)]
pub struct MethodCollector {
    methods: Arc<Methods>,
    /// The `outcome` label of each outcome number.
    outcomes: Vec<&'static str>,
}

impl MethodCollector {
    /// `outcomes`: the labels of outcomes 0, 1, ... (at most [`MAX_OUTCOMES`]).
    pub fn new(
        methods: Arc<Methods>,
        outcomes: impl IntoIterator<Item = &'static str>,
    ) -> MethodCollector {
        let outcomes: Vec<_> = outcomes.into_iter().collect();
        assert!(outcomes.len() <= MAX_OUTCOMES);
        MethodCollector { methods, outcomes }
    }
}

impl Collector for MethodCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let all: Vec<_> = self
            .methods
            .all()
            .into_iter()
            .map(|m| {
                let s = m.snapshot();
                (m, s)
            })
            .collect();
        {
            let mut f = e.encode_descriptor(
                "method_requests",
                "Calls by service, method and how they ended",
                None,
                MetricType::Counter,
            )?;
            for (m, s) in &all {
                for (&outcome, &n) in self.outcomes.iter().zip(&s.outcomes) {
                    let labels = [
                        ("service", m.service()),
                        ("method", m.method()),
                        ("outcome", outcome),
                    ];
                    ConstCounter::new(n).encode(f.encode_family(&labels)?)?;
                }
            }
        }
        let mut f = e.encode_descriptor(
            "method_latency",
            "Time from a call's arrival to its answer, by service and method",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (m, s) in &all {
            let bounds = LATENCY_BOUNDS_US.iter().map(|&b| b as f64 / 1e6);
            let buckets: Vec<(f64, u64)> = bounds.chain([f64::MAX]).zip(s.buckets).collect();
            let labels = [("service", m.service()), ("method", m.method())];
            f.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                s.latency_sum_us as f64 / 1e6,
                s.timed(),
                &buckets,
                None,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_bounded_labels() {
        assert!(matches!(
            label(b"getUser_v2.x-y"),
            Cow::Borrowed("getUser_v2.x-y")
        ));
        assert_eq!(label(b""), "_");
        assert_eq!(label(b"a\"b}\\c d\n"), "a_b__c_d_");
        assert_eq!(label("naïve".as_bytes()), "na__ve");
        let long = [b'm'; 300];
        assert_eq!(label(&long), "m".repeat(MAX_NAME));
        let mut long_bad = vec![b'x'; MAX_NAME];
        long_bad.push(b'{');
        assert_eq!(label(&long_bad), "x".repeat(MAX_NAME));
    }

    #[test]
    fn methods_beyond_the_limit_are_counted_as_other() {
        let m = Methods::new(2);
        let a = m.resolve(b"svc", b"a");
        assert!(Arc::ptr_eq(&a, &m.resolve(b"svc", b"a")));
        let b = m.resolve(b"svc", b"b");
        let c = m.resolve(b"svc", b"c");
        let d = m.resolve(b"svc", b"d\x00");
        assert_eq!((b.method(), c.method()), ("b", OTHER));
        assert!(Arc::ptr_eq(&c, &d));
        // Known methods keep their own series; other services have their own limit.
        assert_eq!(m.resolve(b"svc", b"b").method(), "b");
        assert_eq!(m.resolve(b"two", b"c").method(), "c");
        let names: Vec<_> = m
            .all()
            .iter()
            .map(|s| format!("{}.{}", s.service(), s.method()))
            .collect();
        assert_eq!(names, ["svc.a", "svc.b", "svc.other", "two.c"]);
    }

    #[test]
    fn names_that_clean_up_alike_share_one_series() {
        let m = Methods::default();
        let a = m.resolve(b"s", b"get user");
        assert!(Arc::ptr_eq(&a, &m.resolve(b"s", b"get\tuser")));
        assert_eq!(a.method(), "get_user");
        assert_eq!(m.resolve(b"s\"}", b"x").service(), "s__");
    }

    #[test]
    fn services_are_bounded_too() {
        let m = Methods::new(1);
        for i in 0..MAX_SERVICES + 10 {
            m.resolve(format!("s{i}").as_bytes(), b"m");
        }
        let all = m.all();
        assert_eq!(all.len(), MAX_SERVICES + 1);
        assert!(all.iter().any(|s| s.service() == OTHER));
    }

    #[test]
    fn a_tally_adds_to_the_shared_counts_when_flushed() {
        let m = Methods::new(1);
        let mut t = MethodTally::default();
        let resolve = |n: &'static [u8]| || m.resolve(b"s", n);
        let a = t.id(b"s:a", resolve(b"a"));
        assert_eq!(t.id(b"s:a", || unreachable!("remembered")), a);
        // Both beyond the limit: one entry.
        let b = t.id(b"s:b", resolve(b"b"));
        assert_eq!(t.id(b"s:c", resolve(b"c")), b);
        t.record(a, 0, Some(Duration::from_micros(40)));
        t.record(a, 0, Some(Duration::from_micros(150)));
        t.record(a, 1, Some(Duration::from_secs(20)));
        t.record(b, 2, None);
        let stats = m.resolve(b"s", b"a");
        assert_eq!(
            stats.snapshot().calls(),
            0,
            "nothing shared before the flush"
        );
        t.flush();
        t.flush();
        let s = stats.snapshot();
        assert_eq!(
            (s.outcomes[0], s.outcomes[1], s.calls(), s.timed()),
            (2, 1, 3, 3)
        );
        assert_eq!(
            (s.buckets[0], s.buckets[2], s.buckets[BUCKETS - 1]),
            (1, 1, 1)
        );
        assert_eq!(s.latency_sum_us, 20_000_190);
        let other = m.resolve(b"s", b"zzz").snapshot();
        assert_eq!((other.outcomes[2], other.timed()), (1, 0));
        // What is left is added when the connection ends.
        t.record(a, 0, None);
        drop(t);
        assert_eq!(stats.snapshot().calls(), 4);
    }

    #[test]
    fn a_connection_remembers_a_bounded_number_of_names() {
        let m = Methods::new(4);
        let mut t = MethodTally::default();
        for i in 0..LOCAL_NAMES * 2 {
            let name = format!("m{i}");
            let id = t.id(name.as_bytes(), || m.resolve(b"s", name.as_bytes()));
            t.record(id, 0, None);
        }
        assert_eq!(t.names.len(), LOCAL_NAMES);
        assert_eq!(t.entries.len(), 5, "four methods and other");
        t.flush();
        let total: u64 = m.all().iter().map(|s| s.snapshot().calls()).sum();
        assert_eq!(total, (LOCAL_NAMES * 2) as u64);
    }

    #[test]
    fn the_collector_writes_counters_and_histograms_per_method() {
        let m = Arc::new(Methods::default());
        let mut t = MethodTally::default();
        let id = t.id(b"x", || m.resolve(b"echo", b"ping"));
        t.record(id, 0, Some(Duration::from_micros(300)));
        t.record(id, 1, Some(Duration::from_millis(3)));
        t.flush();
        let mut r = prometheus_client::registry::Registry::with_prefix("p");
        r.register_collector(Box::new(MethodCollector::new(m, ["ok", "err"])));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        for line in [
            "p_method_requests_total{service=\"echo\",method=\"ping\",outcome=\"ok\"} 1",
            "p_method_requests_total{service=\"echo\",method=\"ping\",outcome=\"err\"} 1",
            "# TYPE p_method_latency_seconds histogram",
            "p_method_latency_seconds_count{service=\"echo\",method=\"ping\"} 2",
            "p_method_latency_seconds_bucket{le=\"0.0005\",service=\"echo\",method=\"ping\"} 1",
            "p_method_latency_seconds_bucket{le=\"0.005\",service=\"echo\",method=\"ping\"} 2",
            "p_method_latency_seconds_bucket{le=\"+Inf\",service=\"echo\",method=\"ping\"} 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
    }
}
