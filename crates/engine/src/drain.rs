//! Graceful shutdown: a server holds the [`Signal`], each of its
//! connection tasks a [`Watch`]. Draining tells every watch at once and
//! then waits until all of them are gone (their connections finished what
//! they owed and closed).

use tokio::sync::watch;

/// The server's side.
pub struct Signal {
    tx: watch::Sender<bool>,
}

/// A connection's side: tells it when to stop; dropping it says "done".
/// Keep it until the connection has finished: pass `watch.signaled()`
/// (a borrow) as a shutdown future, not an `async move` block owning the
/// watch, which would drop it as soon as the signal came.
#[derive(Clone)]
pub struct Watch {
    rx: watch::Receiver<bool>,
}

pub fn channel() -> (Signal, Watch) {
    let (tx, rx) = watch::channel(false);
    (Signal { tx }, Watch { rx })
}

impl Signal {
    /// Another watch (for a connection accepted later).
    pub fn watch(&self) -> Watch {
        Watch {
            rx: self.tx.subscribe(),
        }
    }

    /// Tells every watch to stop, without waiting.
    pub fn start(&self) {
        self.tx.send_replace(true);
    }

    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        *self.tx.borrow()
    }

    /// Watches still held.
    pub fn watchers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Waits until every watch is dropped (starting the drain if needed).
    pub async fn drain(&self) {
        self.start();
        self.tx.closed().await;
    }
}

impl Watch {
    /// Resolves once draining has started (at once if it has). Cancel-safe.
    pub async fn signaled(&mut self) {
        // An error means the signal is gone: that stops everyone too.
        let _ = self.rx.wait_for(|d| *d).await;
    }

    pub fn is_signaled(&self) -> bool {
        *self.rx.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_every_watch_and_each_sees_the_signal() {
        let (signal, w1) = channel();
        let w2 = signal.watch();
        assert_eq!(signal.watchers(), 2);
        let conns: Vec<_> = [w1, w2]
            .into_iter()
            .enumerate()
            .map(|(i, mut w)| {
                tokio::spawn(async move {
                    w.signaled().await;
                    // Finishing what it owes takes a while.
                    tokio::time::sleep(Duration::from_millis(100 * (i as u64 + 1))).await;
                })
            })
            .collect();
        let started = tokio::time::Instant::now();
        signal.drain().await;
        assert_eq!(started.elapsed(), Duration::from_millis(200));
        for c in conns {
            c.await.unwrap();
        }
        assert!(signal.is_draining());
        // A watch taken after the drain started sees it at once.
        signal.watch().signaled().await;
    }

    #[tokio::test]
    async fn a_dropped_signal_releases_its_watches() {
        let (signal, mut w) = channel();
        drop(signal);
        w.signaled().await;
    }
}
