//! Choosing a backend connection for one request.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rand::Rng;
use rpc_config::Balance;

use crate::backend::Backend;

pub struct Balancer {
    kind: Balance,
    next: AtomicUsize,
}

impl Balancer {
    pub fn new(kind: Balance) -> Self {
        Balancer {
            kind,
            next: AtomicUsize::new(0),
        }
    }

    /// A live backend, or `None` if no connection of the service is up.
    ///
    /// `p2c` takes the cheaper of two random choices, cost = latency
    /// estimate × (outstanding + 1) (peak EWMA, `ewma.rs`). Outstanding
    /// requests spread load; latency tells a slow endpoint from a fast one
    /// even when nothing is in flight (one call at a time). Two choices are
    /// nearly as good as a full scan and keep proxies from herding onto the
    /// same "best" endpoint; the estimate's decay toward zero while an
    /// endpoint gets no traffic makes a shunned one tried again.
    pub fn pick<'a>(&self, backends: &'a [Arc<Backend>]) -> Option<&'a Arc<Backend>> {
        let n = backends.len();
        match n {
            0 => None,
            1 => backends.first().filter(|b| b.is_up()),
            _ => match self.kind {
                Balance::RoundRobin => {
                    let start = self.next.fetch_add(1, Ordering::Relaxed);
                    (0..n)
                        .map(|i| &backends[(start + i) % n])
                        .find(|b| b.is_up())
                }
                Balance::LeastOutstanding => {
                    let mut rng = rand::thread_rng();
                    let i = rng.gen_range(0..n);
                    let mut j = rng.gen_range(0..n - 1);
                    if j >= i {
                        j += 1;
                    }
                    let (a, b) = (&backends[i], &backends[j]);
                    let best = match (a.is_up(), b.is_up()) {
                        (true, true) => Some(if b.cheaper_than(a) { b } else { a }),
                        (true, false) => Some(a),
                        (false, true) => Some(b),
                        (false, false) => None,
                    };
                    // Both draws down: fall back to a scan for any live one.
                    best.or_else(|| {
                        backends.iter().filter(|b| b.is_up()).reduce(|best, b| {
                            if b.cheaper_than(best) {
                                b
                            } else {
                                best
                            }
                        })
                    })
                }
            },
        }
    }
}
