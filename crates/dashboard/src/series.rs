//! Traffic over time: rates from counter deltas, p99 from the deltas of a
//! cumulative latency histogram, and a ring of the last minutes' samples
//! per (status page, service).

use std::collections::VecDeque;

use serde::Serialize;

/// The cumulative counters of one service read from one status page at
/// one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    /// Unix time of the read, milliseconds.
    pub at_ms: u64,
    /// Requests received.
    pub requests: u64,
    /// Requests that ended in an error, when the page counts them for
    /// this service.
    pub errors: Option<u64>,
    /// Cumulative latency buckets `(upper bound in seconds, count)`, in
    /// ascending order, the last one `+Inf`, when the page has them.
    pub buckets: Option<Vec<(f64, u64)>>,
    /// A latency the page states directly (e.g. the proxy's estimate),
    /// milliseconds.
    pub latency_ms: Option<f64>,
}

/// What one interval between two readings looked like.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// End of the interval, Unix milliseconds.
    pub t_ms: u64,
    /// Requests per second.
    pub rate: f64,
    /// Errors as a fraction of requests (0 when there were none), when
    /// known.
    pub error_rate: Option<f64>,
    /// 99th percentile latency of the interval's answered requests,
    /// milliseconds, when known and there were any.
    pub p99_ms: Option<f64>,
    /// The latency the page stated, milliseconds.
    pub latency_ms: Option<f64>,
}

/// How much a counter grew from `before` to `now`. A counter that went
/// down was reset (its process restarted): everything it holds is new.
pub fn delta(before: u64, now: u64) -> u64 {
    if now >= before {
        now - before
    } else {
        now
    }
}

/// The interval from `before` to `now`, or `None` when `now` is not later.
pub fn sample(before: &Reading, now: &Reading) -> Option<Sample> {
    if now.at_ms <= before.at_ms {
        return None;
    }
    let secs = (now.at_ms - before.at_ms) as f64 / 1000.0;
    let requests = delta(before.requests, now.requests);
    let error_rate = match (before.errors, now.errors) {
        (Some(b), Some(n)) if requests > 0 => Some((delta(b, n) as f64 / requests as f64).min(1.0)),
        (Some(_), Some(_)) => Some(0.0),
        _ => None,
    };
    let p99_ms = match (&before.buckets, &now.buckets) {
        (Some(b), Some(n)) => quantile(0.99, b, n).map(|s| s * 1000.0),
        _ => None,
    };
    Some(Sample {
        t_ms: now.at_ms,
        rate: requests as f64 / secs,
        error_rate,
        p99_ms,
        latency_ms: now.latency_ms,
    })
}

/// The `q` quantile (seconds) of what was observed between two readings of
/// a cumulative histogram, interpolated linearly within the bucket that
/// holds it (as Prometheus' `histogram_quantile` does); the last finite
/// bound when it falls in the `+Inf` bucket. `None` when nothing was
/// observed, or the buckets of the two readings differ. A histogram that
/// was reset counts from zero.
pub fn quantile(q: f64, before: &[(f64, u64)], now: &[(f64, u64)]) -> Option<f64> {
    if before.len() != now.len() || before.iter().zip(now).any(|(b, n)| b.0 != n.0) {
        return None;
    }
    let reset = before.iter().zip(now).any(|(b, n)| n.1 < b.1);
    let counts: Vec<(f64, u64)> = now
        .iter()
        .zip(before)
        .map(|(n, b)| (n.0, if reset { n.1 } else { n.1 - b.1 }))
        .collect();
    let total = counts.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let (mut lower, mut below) = (0.0, 0u64);
    for &(bound, cumulative) in &counts {
        if cumulative as f64 >= rank {
            if bound.is_infinite() {
                return Some(lower);
            }
            let inside = (cumulative - below) as f64;
            let fraction = if inside > 0.0 {
                (rank - below as f64) / inside
            } else {
                1.0
            };
            return Some(lower + (bound - lower) * fraction);
        }
        lower = bound;
        below = cumulative;
    }
    Some(lower)
}

/// The samples of one (status page, service), the oldest first, and the
/// reading the next one will be computed from.
#[derive(Debug, Default)]
pub struct Series {
    last: Option<Reading>,
    samples: VecDeque<Sample>,
}

impl Series {
    /// Adds `reading`: a sample of the interval since the previous one,
    /// dropping samples older than `keep_ms` before it.
    pub fn push(&mut self, reading: Reading, keep_ms: u64) {
        if let Some(s) = self.last.as_ref().and_then(|b| sample(b, &reading)) {
            self.samples.push_back(s);
        }
        let oldest = reading.at_ms.saturating_sub(keep_ms);
        while self.samples.front().is_some_and(|s| s.t_ms < oldest) {
            self.samples.pop_front();
        }
        self.last = Some(reading);
    }

    pub fn samples(&self) -> impl Iterator<Item = &Sample> {
        self.samples.iter()
    }

    /// Unix milliseconds of the last reading.
    pub fn last_read_ms(&self) -> Option<u64> {
        self.last.as_ref().map(|r| r.at_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(at_ms: u64, requests: u64, errors: Option<u64>) -> Reading {
        Reading {
            at_ms,
            requests,
            errors,
            ..Reading::default()
        }
    }

    #[test]
    fn rates_come_from_counter_deltas() {
        let s = sample(
            &reading(1_000, 100, Some(4)),
            &reading(3_000, 300, Some(14)),
        )
        .unwrap();
        assert_eq!(s.t_ms, 3_000);
        assert_eq!(s.rate, 100.0);
        assert_eq!(s.error_rate, Some(0.05));
        assert_eq!(s.p99_ms, None);
    }

    #[test]
    fn an_idle_interval_has_no_errors_and_unknown_errors_stay_unknown() {
        let idle = sample(&reading(0, 7, Some(2)), &reading(500, 7, Some(2))).unwrap();
        assert_eq!((idle.rate, idle.error_rate), (0.0, Some(0.0)));
        let unknown = sample(&reading(0, 7, None), &reading(500, 9, None)).unwrap();
        assert_eq!((unknown.rate, unknown.error_rate), (4.0, None));
    }

    #[test]
    fn a_reset_counter_counts_from_zero() {
        assert_eq!(delta(10, 25), 15);
        assert_eq!(delta(1_000, 30), 30);
        let s = sample(&reading(0, 1_000, Some(10)), &reading(1_000, 30, Some(3))).unwrap();
        assert_eq!((s.rate, s.error_rate), (30.0, Some(0.1)));
    }

    #[test]
    fn readings_out_of_order_make_no_sample() {
        assert_eq!(
            sample(&reading(2_000, 1, None), &reading(2_000, 5, None)),
            None
        );
        assert_eq!(
            sample(&reading(2_000, 1, None), &reading(1_000, 5, None)),
            None
        );
    }

    const INF: f64 = f64::INFINITY;

    fn hist(counts: &[u64]) -> Vec<(f64, u64)> {
        let bounds = [0.001, 0.01, 0.1, INF];
        bounds.iter().copied().zip(counts.iter().copied()).collect()
    }

    #[test]
    fn p99_interpolates_within_the_bucket_of_the_interval() {
        // 100 new observations: 90 under 1 ms, 9 more under 10 ms, 1 under
        // 100 ms. Rank 99 is the last of the second bucket.
        let before = hist(&[50, 60, 60, 60]);
        let now = hist(&[140, 159, 160, 160]);
        let p = quantile(0.99, &before, &now).unwrap();
        assert!((p - 0.01).abs() < 1e-12, "{p}");
        // The median lies halfway... of the first bucket's 90: 50/90 of it.
        let p50 = quantile(0.5, &before, &now).unwrap();
        assert!((p50 - 0.001 * 50.0 / 90.0).abs() < 1e-12, "{p50}");
    }

    #[test]
    fn p99_in_the_overflow_bucket_is_the_last_bound() {
        let p = quantile(0.99, &hist(&[0, 0, 0, 0]), &hist(&[0, 0, 0, 10])).unwrap();
        assert_eq!(p, 0.1);
    }

    #[test]
    fn no_observations_or_mismatched_buckets_have_no_p99() {
        assert_eq!(
            quantile(0.99, &hist(&[5, 5, 5, 5]), &hist(&[5, 5, 5, 5])),
            None
        );
        let other = vec![(0.5, 1), (INF, 2)];
        assert_eq!(quantile(0.99, &hist(&[0, 0, 0, 0]), &other), None);
    }

    #[test]
    fn a_reset_histogram_counts_from_zero() {
        let p = quantile(0.5, &hist(&[100, 100, 100, 100]), &hist(&[0, 4, 4, 4])).unwrap();
        assert!((p - (0.001 + 0.009 * 0.5)).abs() < 1e-12, "{p}");
    }

    #[test]
    fn samples_carry_p99_in_milliseconds() {
        let mut a = reading(0, 0, Some(0));
        a.buckets = Some(hist(&[0, 0, 0, 0]));
        let mut b = reading(1_000, 10, Some(0));
        b.buckets = Some(hist(&[0, 10, 10, 10]));
        b.latency_ms = Some(2.5);
        let s = sample(&a, &b).unwrap();
        assert!(
            (s.p99_ms.unwrap() - (1.0 + 9.0 * 0.99)).abs() < 1e-9,
            "{s:?}"
        );
        assert_eq!(s.latency_ms, Some(2.5));
    }

    #[test]
    fn the_ring_keeps_the_last_minutes() {
        let mut series = Series::default();
        for i in 0..=10u64 {
            series.push(reading(i * 1_000, i * 10, None), 4_000);
        }
        let times: Vec<u64> = series.samples().map(|s| s.t_ms).collect();
        assert_eq!(times, vec![6_000, 7_000, 8_000, 9_000, 10_000]);
        assert!(series.samples().all(|s| s.rate == 10.0));
        assert_eq!(series.last_read_ms(), Some(10_000));
    }
}
