//! What a run measured, as printed for people and written as JSON.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies are recorded in microseconds, up to one minute.
pub const HIST_MAX_US: u64 = 60_000_000;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds")
}

/// Percentiles of one latency histogram, in microseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            mean_us: (h.mean() * 10.0).round() / 10.0,
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// Counters of a whole run (warm-up included): every request sent is
/// accounted for exactly once as ok, expected exception, exception, wrong
/// or lost.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counts {
    pub sent: u64,
    /// Correct replies to `echo`/`sleep`.
    pub ok: u64,
    /// The exception `fail` must answer with.
    pub expected_exceptions: u64,
    /// Exceptions where a reply was expected (e.g. the proxy's errors).
    pub exceptions: u64,
    /// Replies that do not match their request (type, seqid, name,
    /// payload) or do not parse.
    pub wrong: u64,
    /// Requests without a reply within the timeout, or whose connection
    /// broke before the reply came.
    pub lost: u64,
    /// Replies that came after their request was counted lost.
    pub late: u64,
    pub reconnects: u64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.sent += o.sent;
        self.ok += o.ok;
        self.expected_exceptions += o.expected_exceptions;
        self.exceptions += o.exceptions;
        self.wrong += o.wrong;
        self.lost += o.lost;
        self.late += o.late;
        self.reconnects += o.reconnects;
    }

    /// Every request sent got exactly one verdict.
    pub fn balanced(&self) -> bool {
        self.sent == self.ok + self.expected_exceptions + self.exceptions + self.wrong + self.lost
    }
}

/// The JSON document of one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub target: String,
    pub direct: bool,
    pub mode: String,
    pub connections: usize,
    pub depth: usize,
    pub rate: Option<f64>,
    pub payload: usize,
    pub slow_fraction: f64,
    pub slow_ms: u32,
    pub fail_fraction: f64,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub threads: usize,
    pub idle_connections: usize,
    pub idle_connections_open: usize,
    pub counts: Counts,
    /// Correct replies to requests sent inside the measured window.
    pub measured: u64,
    pub throughput_rps: f64,
    /// All correct replies in the window (fast and slow).
    pub latency: Latency,
    /// `echo` calls only.
    pub latency_fast: Latency,
    /// `sleep` calls only.
    pub latency_slow: Latency,
    /// The first few problems, verbatim.
    pub errors: Vec<String>,
    pub passed: bool,
}

impl Report {
    /// Whether the run saw only correct answers: no wrong or lost reply,
    /// and no unexpected exception unless those are allowed.
    pub fn judge(&mut self, allow_exceptions: bool) {
        let c = &self.counts;
        self.passed = c.wrong == 0
            && c.lost == 0
            && (allow_exceptions || c.exceptions == 0)
            && c.balanced()
            && self.idle_connections_open == self.idle_connections;
    }

    /// The human summary printed at the end of a run.
    pub fn summary(&self) -> String {
        let c = &self.counts;
        let mut s = String::new();
        let shape = match self.rate {
            Some(r) => format!("open loop {r:.0} req/s over {} conns", self.connections),
            None => format!("{}x{}", self.connections, self.depth),
        };
        let _ = writeln!(
            s,
            "{} {} payload {} B: {:.0} req/s ({} in {:.1} s)",
            self.target, shape, self.payload, self.throughput_rps, self.measured, self.duration_s
        );
        let line = |name: &str, l: &Latency| {
            format!(
                "  {name:<5} n={} p50={}us p90={}us p99={}us p99.9={}us max={}us\n",
                l.count, l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us
            )
        };
        s.push_str(&line("all", &self.latency));
        if self.latency_slow.count > 0 {
            s.push_str(&line("fast", &self.latency_fast));
            s.push_str(&line("slow", &self.latency_slow));
        }
        let _ = writeln!(
            s,
            "  sent={} ok={} expected_exc={} exceptions={} wrong={} lost={} late={} reconnects={}",
            c.sent,
            c.ok,
            c.expected_exceptions,
            c.exceptions,
            c.wrong,
            c.lost,
            c.late,
            c.reconnects
        );
        if self.idle_connections > 0 {
            let _ = writeln!(
                s,
                "  idle connections open: {}/{}",
                self.idle_connections_open, self.idle_connections
            );
        }
        for e in &self.errors {
            let _ = writeln!(s, "  error: {e}");
        }
        let _ = write!(s, "  {}", if self.passed { "PASS" } else { "FAIL" });
        s
    }
}

/// Counters the connection tasks bump as they go, read by the progress
/// line once a second.
#[derive(Debug, Default)]
pub struct Live {
    pub ok: AtomicU64,
    pub errors: AtomicU64,
    pub lost: AtomicU64,
    pub reconnects: AtomicU64,
}

impl Live {
    pub fn snapshot(&self) -> [u64; 4] {
        [
            self.ok.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
            self.lost.load(Ordering::Relaxed),
            self.reconnects.load(Ordering::Relaxed),
        ]
    }
}
