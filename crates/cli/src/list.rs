//! `rpcctl list [PRODUCT [SERVICE]]`: what the registry holds, product by
//! product, service by service, with each endpoint's whole SPEC §6 record
//! and how long ago it started, and whether an operator drained it.

use rpc_registry::Endpoint;
use serde::Serialize;

use crate::age;
use crate::source::Source;
use crate::table::Table;

/// The `--json` document: products sorted by name, their services sorted
/// by name (a service left without endpoints has `"endpoints": []`),
/// endpoints sorted by `service_id`.
#[derive(Serialize)]
pub struct Listing {
    /// The registry read, as `--zk` spells it.
    pub registry: String,
    pub products: Vec<Product>,
}

#[derive(Serialize)]
pub struct Product {
    pub product: String,
    pub services: Vec<Service>,
}

#[derive(Serialize)]
pub struct Service {
    pub service: String,
    pub endpoints: Vec<EndpointView>,
}

/// The record as registered (`service`, `service_id`, `frontend`,
/// `deploy_path`, `code_url_version`, `hostname`, `start_time`; missing
/// optional ones are `""`), `started_ago_s`: seconds since `start_time`,
/// `null` when it cannot be read, and `draining`: whether the endpoint has
/// a drain mark (`rpcctl drain`), so that proxies send it no new calls.
#[derive(Serialize)]
pub struct EndpointView {
    #[serde(flatten)]
    pub endpoint: Endpoint,
    pub started_ago_s: Option<i64>,
    pub draining: bool,
}

/// Reads every product, or only `product`, and within it every service or
/// only `service`. A product or service that is not there is listed empty.
pub async fn gather(
    source: &Source,
    product: Option<&str>,
    service: Option<&str>,
) -> anyhow::Result<Listing> {
    let products = match product {
        Some(p) => vec![p.to_string()],
        None => source.products().await?,
    };
    let mut listing = Listing {
        registry: source.describe(),
        products: Vec::with_capacity(products.len()),
    };
    for product in products {
        let mut services = source.services(&product).await?;
        if let Some(only) = service {
            services.retain(|name, _| name == only);
        }
        let services = services
            .into_iter()
            .map(|(service, endpoints)| Service {
                service,
                endpoints: endpoints
                    .into_iter()
                    .map(|endpoint| EndpointView {
                        started_ago_s: age::seconds_since(&endpoint.start_time),
                        draining: endpoint.draining,
                        endpoint,
                    })
                    .collect(),
            })
            .collect();
        listing.products.push(Product { product, services });
    }
    Ok(listing)
}

impl Listing {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a listing serializes") + "\n"
    }

    /// One line per endpoint; a product without services and a service
    /// without endpoints get a line of their own saying so.
    pub fn to_table(&self) -> String {
        let mut t = Table::new(&[
            "PRODUCT",
            "SERVICE",
            "FRONTEND",
            "SERVICE_ID",
            "DRAINING",
            "HOSTNAME",
            "START_TIME",
            "STARTED",
            "DEPLOY_PATH",
            "CODE_URL_VERSION",
        ]);
        for p in &self.products {
            if p.services.is_empty() {
                t.row(vec![p.product.clone(), "(no services)".into()]);
            }
            for s in &p.services {
                if s.endpoints.is_empty() {
                    t.row(vec![
                        p.product.clone(),
                        s.service.clone(),
                        "(no endpoints)".into(),
                    ]);
                }
                for e in &s.endpoints {
                    let ep = &e.endpoint;
                    t.row(vec![
                        p.product.clone(),
                        s.service.clone(),
                        ep.frontend.clone(),
                        ep.service_id.clone(),
                        if e.draining { "yes" } else { "no" }.into(),
                        ep.hostname.clone(),
                        ep.start_time.clone(),
                        e.started_ago_s.map(age::human).unwrap_or_default(),
                        ep.deploy_path.clone(),
                        ep.code_url_version.clone(),
                    ]);
                }
            }
        }
        if t.is_empty() {
            return format!("nothing registered in {}\n", self.registry);
        }
        t.render()
    }
}
