//! `rpcctl drain SERVICE ENDPOINT` and `rpcctl undrain SERVICE ENDPOINT`:
//! put or remove the drain mark of one endpoint (`rpc_registry::drain`).
//! Proxies watch the marks with the endpoints: a drained endpoint gets no
//! new calls while another endpoint of its service is up, and keeps its
//! connections and the calls it has in flight. The endpoint itself is not
//! told and keeps running.

use anyhow::bail;
use rpc_registry::{service_id, DrainMark, Endpoint};
use serde::Serialize;

use crate::list::{self, Listing};
use crate::source::Source;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Drain,
    Undrain,
}

/// The `--json` document: what was done, then the service as `list
/// --json` shows it afterwards (`registry`, `products`).
#[derive(Serialize)]
pub struct Change {
    /// `drain` or `undrain`.
    pub action: &'static str,
    pub product: String,
    pub service: String,
    pub service_id: String,
    /// The registered endpoint's address; `null` when it is not
    /// registered (`--force`).
    pub frontend: Option<String>,
    pub registered: bool,
    /// False when there was nothing to do: already drained (drain), or
    /// not drained (undrain).
    pub changed: bool,
    #[serde(flatten)]
    pub listing: Listing,
}

/// Drains or undrains `endpoint` (a registered endpoint's `frontend` or
/// `service_id`) of `product`/`service`. An endpoint that is not
/// registered is an error unless `force`, when its mark (by the
/// `service_id` the argument gives) is set or removed all the same.
pub async fn run(
    source: &Source,
    action: Action,
    product: &str,
    service: &str,
    endpoint: &str,
    force: bool,
) -> anyhow::Result<Change> {
    let endpoints = source
        .services(product)
        .await?
        .remove(service)
        .unwrap_or_default();
    let found = endpoints
        .iter()
        .find(|e| e.frontend == endpoint || e.service_id == endpoint);
    let (id, frontend) = match found {
        Some(e) => (e.service_id.clone(), Some(e.frontend.clone())),
        // service_id() leaves a service_id as it is.
        None if force => (service_id(endpoint), None),
        None => bail!(
            "{endpoint} is not a registered endpoint of {product}/{service} in {} ({}); \
             --force to {} it anyway",
            source.describe(),
            registered(&endpoints),
            match action {
                Action::Drain => "drain",
                Action::Undrain => "remove its drain mark",
            }
        ),
    };
    let changed = match action {
        Action::Drain => {
            let mark = DrainMark::new(frontend.as_deref().unwrap_or(endpoint));
            source.drain(product, service, &id, &mark).await?
        }
        Action::Undrain => source.undrain(product, service, &id).await?,
    };
    Ok(Change {
        action: match action {
            Action::Drain => "drain",
            Action::Undrain => "undrain",
        },
        product: product.to_string(),
        service: service.to_string(),
        registered: found.is_some(),
        service_id: id,
        frontend,
        changed,
        listing: list::gather(source, Some(product), Some(service)).await?,
    })
}

/// `registered: a, b` or `no endpoint registered`, for error messages.
fn registered(endpoints: &[Endpoint]) -> String {
    if endpoints.is_empty() {
        return "no endpoint registered".into();
    }
    let names: Vec<&str> = endpoints.iter().map(|e| e.frontend.as_str()).collect();
    format!("registered: {}", names.join(", "))
}

impl Change {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a change serializes") + "\n"
    }

    /// What was done, in one line, then the service's endpoints as `list`
    /// shows them.
    pub fn to_table(&self) -> String {
        let name = match &self.frontend {
            Some(f) => format!("{f} ({})", self.service_id),
            None => format!("{} (not registered)", self.service_id),
        };
        let what = format!("{}/{} {name}", self.product, self.service);
        let line = match (self.action, self.changed) {
            ("drain", true) => format!("drained {what}: proxies send it no new calls"),
            ("drain", false) => format!("{what} was drained already"),
            (_, true) => format!("undrained {what}: proxies send it calls again"),
            (_, false) => format!("{what} was not drained"),
        };
        format!("{line}\n{}", self.listing.to_table())
    }

    /// Whether every registered endpoint of the service is now drained
    /// (proxies then keep using them: worth a warning).
    pub fn all_drained(&self) -> bool {
        let endpoints = self
            .listing
            .products
            .iter()
            .flat_map(|p| &p.services)
            .flat_map(|s| &s.endpoints);
        let mut any = false;
        for e in endpoints {
            if !e.draining {
                return false;
            }
            any = true;
        }
        any
    }
}
