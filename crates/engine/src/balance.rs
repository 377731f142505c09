//! Choosing a peer for one request, as a pure algorithm over a small
//! [`Load`] trait: the proxy picks among endpoint connections, the LB among
//! worker slots, and tests among fakes with a paused clock.
//!
//! - [`Strategy::P2c`]: the cheaper of two random choices (power of two
//!   choices). Two choices are nearly as good as a full scan and keep many
//!   pickers from herding onto the same "best" peer.
//! - [`Strategy::LeastLoaded`]: the cheapest of all, scanning from a
//!   rotating start (ties go round) and stopping at an idle one.
//! - [`Strategy::RoundRobin`]: the next ready one after the last pick.
//!
//! A [`Balancer`] keeps its cursor across changes of the peer list (the
//! proxy keeps one per service across registry updates).

use std::sync::atomic::{AtomicUsize, Ordering};

use rand::Rng;

/// What a balancer needs to know of a peer.
pub trait Load {
    /// Whether it can take a request now.
    fn ready(&self) -> bool;

    /// Whether it costs less than `other` now.
    fn cheaper_than(&self, other: &Self) -> bool;

    /// Whether nothing can beat it (no load at all): a scan stops here.
    fn idle(&self) -> bool {
        false
    }
}

/// Peers shared with their connection tasks are picked through an `Arc`.
impl<T: Load> Load for std::sync::Arc<T> {
    fn ready(&self) -> bool {
        T::ready(self)
    }

    fn cheaper_than(&self, other: &Self) -> bool {
        T::cheaper_than(self, other)
    }

    fn idle(&self) -> bool {
        T::idle(self)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    P2c,
    LeastLoaded,
    RoundRobin,
}

pub struct Balancer {
    strategy: Strategy,
    /// Where the next scan starts: just after the last pick.
    cursor: AtomicUsize,
}

impl Balancer {
    pub fn new(strategy: Strategy) -> Balancer {
        Balancer {
            strategy,
            cursor: AtomicUsize::new(0),
        }
    }

    /// The index of the peer the next request goes to; `None` when none
    /// is ready.
    pub fn pick<T: Load>(&self, peers: &[T]) -> Option<usize> {
        let n = peers.len();
        let picked = match (n, self.strategy) {
            (0, _) => None,
            (1, _) => peers[0].ready().then_some(0),
            (_, Strategy::P2c) => p2c(peers, &mut rand::thread_rng()),
            (_, Strategy::LeastLoaded) => self.scan(peers, true),
            (_, Strategy::RoundRobin) => self.scan(peers, false),
        };
        if let Some(i) = picked {
            if self.strategy != Strategy::P2c {
                self.cursor.store(i + 1, Ordering::Relaxed);
            }
        }
        picked
    }

    /// From the cursor on: the first ready peer, or (`cheapest`) the
    /// cheapest ready one, stopping early at an idle one.
    fn scan<T: Load>(&self, peers: &[T], cheapest: bool) -> Option<usize> {
        let n = peers.len();
        let start = self.cursor.load(Ordering::Relaxed);
        let mut best: Option<usize> = None;
        for k in 0..n {
            let i = (start + k) % n;
            let p = &peers[i];
            if !p.ready() {
                continue;
            }
            if !cheapest {
                return Some(i);
            }
            if best.is_none_or(|b| p.cheaper_than(&peers[b])) {
                best = Some(i);
                if p.idle() {
                    break;
                }
            }
        }
        best
    }
}

/// Two distinct random peers, the cheaper ready one; when both draws are
/// not ready, the cheapest ready peer of all.
pub fn p2c<T: Load>(peers: &[T], rng: &mut impl Rng) -> Option<usize> {
    let n = peers.len();
    let i = rng.gen_range(0..n);
    let mut j = rng.gen_range(0..n - 1);
    if j >= i {
        j += 1;
    }
    let (a, b) = (&peers[i], &peers[j]);
    match (a.ready(), b.ready()) {
        (true, true) => Some(if b.cheaper_than(a) { j } else { i }),
        (true, false) => Some(i),
        (false, true) => Some(j),
        (false, false) => (0..n).filter(|&k| peers[k].ready()).reduce(|best, k| {
            if peers[k].cheaper_than(&peers[best]) {
                k
            } else {
                best
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ewma::{nanos, PeakEwma};
    use proptest::prelude::{any, prop_assert, prop_assert_eq, prop_assert_ne, proptest};
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::time::Duration;
    use tokio::time::Instant;

    /// A peer with a fixed load.
    #[derive(Clone, Copy, Debug)]
    struct Fixed {
        ready: bool,
        load: u32,
    }

    impl Load for Fixed {
        fn ready(&self) -> bool {
            self.ready
        }
        fn cheaper_than(&self, other: &Self) -> bool {
            self.load < other.load
        }
        fn idle(&self) -> bool {
            self.load == 0
        }
    }

    fn fixed(loads: &[u32]) -> Vec<Fixed> {
        loads
            .iter()
            .map(|&load| Fixed { ready: true, load })
            .collect()
    }

    #[test]
    fn round_robin_goes_round_and_skips_peers_not_ready() {
        let b = Balancer::new(Strategy::RoundRobin);
        let mut peers = fixed(&[0, 0, 0]);
        let picks: Vec<_> = (0..6).map(|_| b.pick(&peers).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        peers[1].ready = false;
        let picks: Vec<_> = (0..4).map(|_| b.pick(&peers).unwrap()).collect();
        assert_eq!(picks, [0, 2, 0, 2]);
        peers.iter_mut().for_each(|p| p.ready = false);
        assert_eq!(b.pick(&peers), None);
    }

    #[test]
    fn least_loaded_takes_the_cheapest_and_rotates_ties() {
        let b = Balancer::new(Strategy::LeastLoaded);
        assert_eq!(b.pick(&fixed(&[3, 1, 2])), Some(1));
        let even = fixed(&[1, 1, 1]);
        let picks: Vec<_> = (0..3).map(|_| b.pick(&even).unwrap()).collect();
        assert_eq!(picks, [2, 0, 1]);
        // The cursor survives a change of the peer list.
        assert_eq!(b.pick(&fixed(&[1, 1, 1, 1])), Some(2));
    }

    #[test]
    fn one_peer_is_picked_only_when_ready() {
        for s in [Strategy::P2c, Strategy::LeastLoaded, Strategy::RoundRobin] {
            let b = Balancer::new(s);
            assert_eq!(b.pick::<Fixed>(&[]), None);
            assert_eq!(b.pick(&fixed(&[5])), Some(0));
            assert_eq!(
                b.pick(&[Fixed {
                    ready: false,
                    load: 0
                }]),
                None
            );
        }
    }

    proptest! {
        /// Whatever the loads: a pick is ready, and p2c never picks the
        /// more loaded of its two draws... so never the single worst when
        /// it is strictly worse than every other.
        #[test]
        fn picks_are_ready_and_p2c_avoids_the_strictly_worst(
            loads in proptest::collection::vec((any::<bool>(), 0u32..100), 2..12),
            seed in any::<u64>(),
        ) {
            let peers: Vec<Fixed> = loads.iter().map(|&(ready, load)| Fixed { ready, load }).collect();
            let mut rng = StdRng::seed_from_u64(seed);
            let any_ready = peers.iter().any(|p| p.ready);
            for s in [Strategy::P2c, Strategy::LeastLoaded, Strategy::RoundRobin] {
                let picked = match s {
                    Strategy::P2c => p2c(&peers, &mut rng),
                    _ => Balancer::new(s).pick(&peers),
                };
                prop_assert_eq!(picked.is_some(), any_ready);
                if let Some(i) = picked {
                    prop_assert!(peers[i].ready);
                }
            }
            let ready: Vec<usize> = (0..peers.len()).filter(|&i| peers[i].ready).collect();
            // Among ready peers only (a draw that is not ready leaves the
            // other draw, whatever its load).
            let live: Vec<Fixed> = ready.iter().map(|&i| peers[i]).collect();
            if live.len() >= 2 {
                let worst = (0..live.len()).max_by_key(|&i| live[i].load).unwrap();
                if (0..live.len()).all(|i| i == worst || live[i].load < live[worst].load) {
                    for _ in 0..20 {
                        prop_assert_ne!(p2c(&live, &mut rng), Some(worst));
                    }
                }
            }
            if let Some(i) = Balancer::new(Strategy::LeastLoaded).pick(&peers) {
                prop_assert!(ready.iter().all(|&k| peers[k].load >= peers[i].load));
            }
        }

        /// Under equal load, p2c spreads picks evenly.
        #[test]
        fn p2c_spreads_equal_load_evenly(n in 2usize..8, seed in any::<u64>()) {
            let peers = fixed(&vec![1; n]);
            let mut rng = StdRng::seed_from_u64(seed);
            let mut counts = vec![0u32; n];
            let draws = 2000 * n as u32;
            for _ in 0..draws {
                counts[p2c(&peers, &mut rng).unwrap()] += 1;
            }
            let mean = f64::from(draws) / n as f64;
            for c in counts {
                prop_assert!((f64::from(c) - mean).abs() < 0.2 * mean, "{} vs mean {}", c, mean);
            }
        }
    }

    /// An endpoint as the proxy weighs it: latency estimate × (outstanding + 1).
    struct Endpoint {
        latency: PeakEwma,
        outstanding: usize,
    }

    impl Load for Endpoint {
        fn ready(&self) -> bool {
            true
        }
        fn cheaper_than(&self, other: &Self) -> bool {
            self.latency
                .cheaper(self.outstanding, &other.latency, other.outstanding)
        }
    }

    /// One call at a time to a fast and a slow endpoint, on a paused clock:
    /// after one slow reply the slow one is shunned, its estimate decays
    /// while it gets nothing, and it is tried again (re-probed) seconds
    /// later; answering fast again, it gets traffic back.
    #[tokio::test(start_paused = true)]
    async fn a_slow_peer_is_avoided_then_reprobed_as_its_estimate_decays() {
        let tau = Duration::from_secs(1);
        let peers = [
            Endpoint {
                latency: PeakEwma::new(tau),
                outstanding: 0,
            },
            Endpoint {
                latency: PeakEwma::new(tau),
                outstanding: 0,
            },
        ];
        let b = Balancer::new(Strategy::P2c);
        let fast = Duration::from_micros(100);
        let mut slow = Duration::from_millis(20);
        // When the slow peer got its first call, and its next (the probe).
        let (mut first, mut probe) = (None, None);
        let mut to_slow = 0;
        for _ in 0..100_000 {
            let i = b.pick(&peers).unwrap();
            let now = Instant::now();
            if i == 1 {
                to_slow += 1;
                match (first, probe) {
                    (None, _) => first = Some(now),
                    (Some(t), None) => {
                        probe = Some(now - t);
                        slow = fast; // it recovered
                    }
                    _ => {}
                }
            }
            let took = if i == 1 { slow } else { fast };
            tokio::time::advance(took).await;
            peers[i]
                .latency
                .observe(took.as_nanos() as u64, nanos(Instant::now()));
        }
        // Shunned after its first slow reply, then re-probed only once its
        // estimate decayed below the fast one's: ln(20 ms / 0.1 ms) = 5.3 tau.
        let probe = probe.expect("the slow peer is tried again");
        assert!(
            probe >= 5 * tau && probe <= 7 * tau,
            "re-probed after {probe:?}"
        );
        // Fast again, it keeps getting calls (more often as its estimate
        // settles), never starved.
        assert!(
            to_slow > 50,
            "only {to_slow} calls went to the recovered peer"
        );
    }
}
