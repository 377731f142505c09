//! Peak EWMA: the reply-latency estimate the balancer weighs endpoints by
//! (as Finagle's and linkerd's "peak EWMA").
//!
//! A sample above the estimate replaces it at once (a slowing endpoint is
//! noticed on its first slow reply); a sample below it pulls the estimate
//! toward it with weight `1 - exp(-elapsed/tau)`, `elapsed` being the time
//! since the previous sample, so `tau` is a window in time whatever the
//! request rate. While no sample arrives the estimate decays toward zero
//! with the same `tau`: an endpoint shunned for one bad reply looks cheap
//! again after a while and is tried again, instead of being starved.
//!
//! One backend task writes; any client task reads. Two relaxed atomics (the
//! estimate and when it was taken) may be read torn, which only skews one
//! choice. Times are nanoseconds since a process-wide epoch ([`nanos`]),
//! taken from the clock reads the backend already does per batch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

/// Nanoseconds from the process-wide epoch to `t` (0 before the epoch).
pub fn nanos(t: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    t.saturating_duration_since(epoch).as_nanos() as u64
}

pub struct PeakEwma {
    /// The estimate in nanoseconds (`f64` bits) as of `stamp`.
    rtt: AtomicU64,
    /// When `rtt` was last updated, from [`nanos`].
    stamp: AtomicU64,
    /// `tau` in nanoseconds.
    tau: f64,
}

impl PeakEwma {
    /// An endpoint without a sample starts at zero: the cheapest to try.
    pub fn new(tau: Duration) -> PeakEwma {
        PeakEwma {
            rtt: AtomicU64::new(0f64.to_bits()),
            stamp: AtomicU64::new(0),
            tau: (tau.as_nanos() as f64).max(1.0),
        }
    }

    fn load(&self) -> (f64, u64) {
        (
            f64::from_bits(self.rtt.load(Ordering::Relaxed)),
            self.stamp.load(Ordering::Relaxed),
        )
    }

    /// Takes a latency sample seen at `now`. Single writer.
    pub fn observe(&self, rtt: u64, now: u64) {
        let (old, stamp) = self.load();
        let sample = rtt as f64;
        let new = if sample >= old {
            sample
        } else {
            let w = (-(now.saturating_sub(stamp) as f64) / self.tau).exp();
            old * w + sample * (1.0 - w)
        };
        self.rtt.store(new.to_bits(), Ordering::Relaxed);
        self.stamp.store(now.max(stamp), Ordering::Relaxed);
    }

    /// The estimate at `now`, in nanoseconds: decayed since the last sample.
    pub fn estimate(&self, now: u64) -> f64 {
        let (rtt, stamp) = self.load();
        rtt * (-(now.saturating_sub(stamp) as f64) / self.tau).exp()
    }

    /// Whether `self` with `load` requests outstanding costs less than
    /// `other` with `other_load`; cost = estimate × (outstanding + 1).
    ///
    /// Both estimates decay with the same `tau`, so the order of the two
    /// costs is the same at every instant: comparing them at the later of
    /// the two stamps needs no clock read, and one `exp`.
    pub fn cheaper(&self, load: usize, other: &PeakEwma, other_load: usize) -> bool {
        let (a, sa) = self.load();
        let (b, sb) = other.load();
        let mut ca = a * (load as f64 + 1.0);
        let mut cb = b * (other_load as f64 + 1.0);
        if sa < sb {
            ca *= (-((sb - sa) as f64) / self.tau).exp();
        } else {
            cb *= (-((sa - sb) as f64) / other.tau).exp();
        }
        // Equal costs (both endpoints without a sample yet, so both zero):
        // fewer requests outstanding wins, as plain least-outstanding.
        ca < cb || (ca == cb && load < other_load)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn ewma() -> PeakEwma {
        PeakEwma::new(Duration::from_secs(1))
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-6 * b.abs().max(1.0)
    }

    #[test]
    fn new_endpoint_costs_nothing() {
        let (fresh, used) = (ewma(), ewma());
        used.observe(MS, 10 * MS);
        assert_eq!(fresh.estimate(10 * MS), 0.0);
        assert!(fresh.cheaper(0, &used, 0));
        assert!(!used.cheaper(0, &fresh, 0));
    }

    #[test]
    fn a_higher_sample_is_taken_at_once() {
        let e = ewma();
        e.observe(MS, 1000 * MS);
        e.observe(20 * MS, 1000 * MS + 1);
        assert!(close(e.estimate(1000 * MS + 1), 20.0 * MS as f64));
    }

    #[test]
    fn lower_samples_pull_it_down_by_time_not_by_count() {
        let e = ewma();
        e.observe(20 * MS, 0);
        // One sample one tau later: weight 1 - 1/e.
        e.observe(MS, 1000 * MS);
        let w = (-1f64).exp();
        let want = 20.0 * MS as f64 * w + MS as f64 * (1.0 - w);
        assert!(
            close(e.estimate(1000 * MS), want),
            "{}",
            e.estimate(1000 * MS)
        );

        // The same tau as a thousand samples 1 ms apart lands in the same
        // place (up to rounding): the rate does not matter.
        let f = ewma();
        f.observe(20 * MS, 0);
        for i in 1..=1000 {
            f.observe(MS, i * MS);
        }
        assert!(
            close(f.estimate(1000 * MS), want),
            "{}",
            f.estimate(1000 * MS)
        );
        // Many samples more and it settles on the sample.
        for i in 1001..=10_000 {
            f.observe(MS, i * MS);
        }
        assert!((f.estimate(10_000 * MS) - MS as f64).abs() < 0.01 * MS as f64);
    }

    #[test]
    fn idle_estimate_decays_toward_zero() {
        let e = ewma();
        e.observe(20 * MS, 5 * MS);
        let at = |t: u64| e.estimate(5 * MS + t);
        assert!(close(at(0), 20.0 * MS as f64));
        assert!(close(at(1000 * MS), 20.0 * MS as f64 * (-1f64).exp()));
        assert!(at(10_000 * MS) < 0.001 * MS as f64);
        // A clock read older than the last sample does not inflate it.
        assert!(close(e.estimate(0), 20.0 * MS as f64));
    }

    #[test]
    fn cost_weighs_latency_and_outstanding() {
        let (fast, slow) = (ewma(), ewma());
        fast.observe(MS / 10, 100 * MS);
        slow.observe(20 * MS, 100 * MS);
        // Idle, the fast one wins; with 199 calls waiting it no longer does.
        assert!(fast.cheaper(0, &slow, 0));
        assert!(!slow.cheaper(0, &fast, 0));
        assert!(fast.cheaper(198, &slow, 0));
        assert!(slow.cheaper(0, &fast, 200));
    }

    #[test]
    fn without_samples_fewer_outstanding_is_cheaper() {
        let (a, b) = (ewma(), ewma());
        assert!(a.cheaper(1, &b, 3));
        assert!(!b.cheaper(3, &a, 1));
        assert!(!a.cheaper(2, &b, 2));
    }

    #[test]
    fn cost_order_is_the_order_of_the_decayed_estimates() {
        let (fast, slow) = (ewma(), ewma());
        slow.observe(20 * MS, 0);
        // The slow one, unheard of since, decays below the fast one's
        // fresh estimate after tau * ln(20 / 0.1) = 5.3 s, then is explored.
        for (t, slow_cheaper) in [(1000, false), (5000, false), (5500, true), (9000, true)] {
            fast.observe(MS / 10, t * MS);
            assert_eq!(slow.cheaper(0, &fast, 0), slow_cheaper, "at {t} ms");
            assert_eq!(fast.cheaper(0, &slow, 0), !slow_cheaper, "at {t} ms");
            let now = t * MS;
            assert_eq!(
                slow.estimate(now) < fast.estimate(now),
                slow_cheaper,
                "at {t} ms"
            );
        }
    }
}
