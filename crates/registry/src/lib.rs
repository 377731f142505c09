//! Where endpoints announce themselves and proxies find them (SPEC §6).
//!
//! One trait, [`Registry`], two backends: [`zk`] for production and
//! [`local`] (a directory of endpoint files) as the single-machine default.
//! Both pass the same conformance suite (`tests/conformance.rs`).
//! Operators' drain marks ([`drain`]) are read with the endpoints.
//!
//! # Product isolation
//!
//! A registry is scoped to one product and reads only that product's
//! subtree (`/zk/product/{product}/services`, `{dir}/{product}/services`).
//! A proxy of a product that is not `online…` must never route to an
//! `online…` product's endpoint, whatever the registry holds. What the
//! registry can hold beyond the layout, and what is done about it:
//!
//! - an endpoint node (or file) copied from another product's subtree:
//!   both backends write the product into every record they publish
//!   (`"product": "online_x"`; readers of the original ignore unknown
//!   fields), and readers drop, with a warning, a record that names a
//!   product other than the one read ([`product_matches`]). The rule is
//!   strict equality, so it holds between any two products, `online…` or
//!   not;
//! - a link into another product (embedded backend): the product and
//!   `services` directories must be real directories and endpoint files
//!   regular files; symbolic links are not followed. ZooKeeper has no
//!   links;
//! - writes by others: with `zk_auth`, only the identity that created a
//!   service's node can add, rewrite or remove its endpoints ([`zk`]).
//!
//! Left out: a record without a `product` (written by another SDK or by
//! hand) is taken as the subtree's, since nothing in it says otherwise;
//! telling it apart from an online endpoint would need every proxy to
//! read and watch every `online…` product.

pub mod drain;
mod endpoint;
pub mod local;
pub mod zk;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use rpc_config::{Config, RegistrySpec};
use tokio::sync::watch;

pub use drain::{DrainMark, DrainSet};
pub use endpoint::{local_time, service_id, Endpoint};

/// Every service of a product and its live endpoints, keyed by service
/// name; endpoints sorted by `service_id`, each with
/// [`Endpoint::draining`] set from the product's drain marks.
pub type ServiceMap = BTreeMap<String, Vec<Endpoint>>;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("zookeeper: {0}")]
    ZooKeeper(String),
    #[error("local registry {path}: {source}")]
    Local {
        path: String,
        source: std::io::Error,
    },
    #[error("bad endpoint record at {path}: {reason}")]
    BadRecord { path: String, reason: String },
    /// A product, service or service_id that is not one path component.
    #[error("{name:?} is not a usable {what}")]
    BadName { what: &'static str, name: String },
    #[error("registry closed")]
    Closed,
}

/// A registry scoped to one product.
#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Publishes `endpoint` under its service (removing a leftover node at
    /// the same path first) and keeps it published — across ZooKeeper
    /// session expiry — until the returned handle is deregistered or
    /// dropped.
    async fn register(&self, endpoint: Endpoint) -> Result<Registration, RegistryError>;

    /// The live view of every service of the product, drain marks
    /// included: adding or removing a mark changes the view like a
    /// registration does. The first value is complete when this returns. A lost connection to the backing store
    /// never empties the view: the last known map stays until the store
    /// answers again.
    async fn watch(&self) -> Result<watch::Receiver<Arc<ServiceMap>>, RegistryError>;
}

/// A live registration. [`Registration::deregister`] removes the entry and
/// waits until it is gone; dropping the handle removes it in the background;
/// [`Registration::abandon`] leaves it in place. Neither ever removes an
/// entry another registrant has put at the same path since.
pub struct Registration {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Registration {
    /// For backends: `task` keeps the entry alive and removes it once `stop`
    /// fires (or its sender is dropped).
    pub fn new(stop: tokio::sync::oneshot::Sender<()>, task: tokio::task::JoinHandle<()>) -> Self {
        Registration {
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn deregister(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Stops keeping the entry published and leaves it as it is: it stays
    /// until its owner goes (ZooKeeper: this registry's session closes or
    /// expires; local: this process exits) or another registrant replaces
    /// it. For a process handing its endpoint to a successor that registers
    /// the same path: nothing of ours is then left to remove the
    /// successor's entry or to put ours back over it. Returns once nothing
    /// acts for this registration any more.
    pub async fn abandon(mut self) {
        // The task must be gone before its stop channel closes: a closed
        // channel reads as "remove the entry".
        let stop = self.stop.take();
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        drop(stop);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Whether an endpoint record read under `product`'s subtree may be used:
/// it names no product, or that one.
pub fn product_matches(named: Option<&str>, product: &str) -> bool {
    named.is_none_or(|p| p == product)
}

/// The SPEC §6 JSON of `endpoint` with the product it is registered under.
pub(crate) fn record_with_product(endpoint: &Endpoint, product: &str) -> Vec<u8> {
    let mut json = serde_json::to_value(endpoint).expect("endpoint serializes");
    json["product"] = serde_json::Value::from(product);
    serde_json::to_vec(&json).expect("endpoint serializes")
}

/// An endpoint record read under `product`'s subtree; an error for a
/// malformed record and for one that names another product.
pub(crate) fn parse_record(bytes: &[u8], product: &str) -> Result<Endpoint, String> {
    #[derive(serde::Deserialize)]
    struct Named {
        #[serde(default)]
        product: Option<String>,
    }
    let endpoint: Endpoint = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let named = serde_json::from_slice::<Named>(bytes)
        .map_err(|e| e.to_string())?
        .product;
    match product_matches(named.as_deref(), product) {
        true => Ok(endpoint),
        false => Err(format!(
            "it names product {:?}, not {product:?}: copied from another product?",
            named.unwrap_or_default()
        )),
    }
}

/// Opens the registry a configuration names (`zk` key), for its product,
/// with its ZooKeeper credentials (`zk_auth`) if any.
pub async fn open(config: &Config) -> Result<Arc<dyn Registry>, RegistryError> {
    match &config.registry {
        RegistrySpec::ZooKeeper(hosts) => Ok(Arc::new(
            zk::ZkRegistry::connect_as(
                hosts,
                &config.product,
                config.zk_session_timeout,
                config.zk_auth.as_ref(),
            )
            .await?,
        )),
        RegistrySpec::Local(dir) => Ok(Arc::new(local::LocalRegistry::open(dir, &config.product)?)),
    }
}

/// The record and drain-mark logic that is otherwise private, for the
/// fuzz targets (`fuzz/`). Not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    use crate::{DrainSet, Endpoint, RegistryError, ServiceMap};

    pub fn parse_record(bytes: &[u8], product: &str) -> Result<Endpoint, String> {
        crate::parse_record(bytes, product)
    }

    pub fn record_with_product(endpoint: &Endpoint, product: &str) -> Vec<u8> {
        crate::record_with_product(endpoint, product)
    }

    pub fn mark(map: &mut ServiceMap, drained: &DrainSet) {
        crate::drain::mark(map, drained)
    }

    pub fn check_names(product: &str, service: &str, id: &str) -> Result<(), RegistryError> {
        crate::drain::check_names(product, service, id)
    }
}
