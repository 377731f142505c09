//! The accept loop every server runs.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rpc_transport::{Listener, Stream};
use tokio::sync::Semaphore;

use crate::drain::Watch;

/// Accepts on `listener` until the drain starts, at most `limit`
/// connections at once (at the limit it stops accepting, and the kernel's
/// backlog holds newcomers until one ends). Each connection runs
/// `conn(stream, watch)` on a task of its own, holding its permit and a
/// drain watch until it ends, so `Signal::drain` waits for it.
pub async fn accept<F, Fut>(
    listener: Listener,
    limit: Arc<Semaphore>,
    mut drain: Watch,
    mut conn: F,
) where
    F: FnMut(Stream, Watch) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => p.expect("the connection limit is never closed"),
            _ = drain.signaled() => return,
        };
        let accepted = tokio::select! {
            s = listener.accept() => s,
            _ = drain.signaled() => return,
        };
        match accepted {
            Ok(stream) => {
                let serving = conn(stream, drain.clone());
                tokio::spawn(async move {
                    serving.await;
                    drop(permit);
                });
            }
            Err(e) => {
                // Typically out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
