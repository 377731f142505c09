//! What the registry tests share: waiting on a watched view, reading it.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use rpc_registry::ServiceMap;
use tokio::sync::watch;

/// The longest a test waits for a view to change.
pub const WAIT: Duration = Duration::from_secs(10);

/// Waits until the view satisfies `cond`, returning it.
pub async fn until(
    rx: &mut watch::Receiver<Arc<ServiceMap>>,
    what: &str,
    cond: impl Fn(&ServiceMap) -> bool,
) -> Arc<ServiceMap> {
    let found = match tokio::time::timeout(WAIT, rx.wait_for(|m| cond(m))).await {
        Ok(Ok(m)) => Some(m.clone()),
        _ => None,
    };
    found.unwrap_or_else(|| panic!("timed out waiting for {what}; view: {:?}", *rx.borrow()))
}

/// The frontends `service` has in the view.
pub fn frontends(m: &ServiceMap, service: &str) -> Vec<String> {
    m.get(service)
        .map(|v| v.iter().map(|e| e.frontend.clone()).collect())
        .unwrap_or_default()
}
