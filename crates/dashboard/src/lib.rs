//! The fleet dashboard (`rpcctl dashboard`): one web page with every
//! product → service → endpoint of the registry, each endpoint's SPEC §6
//! record and live state, and per-service traffic (request rate, error
//! rate, p99 latency, with charts of the last minutes) from the status
//! pages of the proxies and LBs it is given.
//!
//! [`serve`] runs everything in one future: the HTTP server (`/` the page,
//! `/api/fleet` the JSON model behind it) and a collector that every
//! `refresh`:
//!
//! 1. reads the whole registry once, read-only (ZooKeeper through
//!    `rpc_registry::zk::ZkReader`, the embedded registry through
//!    `rpc_registry::local`);
//! 2. sends each endpoint one SPEC §4 heartbeat on a connection of its
//!    own: echoed → `up`, not → `down`; an endpoint that left the
//!    registry is `draining` while it still echoes, then `gone`, and is
//!    shown so for `gone_for`;
//! 3. reads each status page's `/status` and `/metrics` and keeps, per
//!    page and service, `history` worth of samples computed from counter
//!    deltas.
//!
//! The page is one self-contained document (no CDN, no build step) that
//! asks the API every `refresh` and redraws itself.

mod code_link;
mod fleet;
pub mod probe;
// Public for other readers of status pages (`rpcctl top`).
pub mod prom;
mod registry;
pub mod series;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use rpc_config::RegistrySpec;
use rpc_transport::tls::TlsClient;
use tokio::sync::watch;

pub use code_link::link as code_link;
pub use fleet::{
    EndpointView, Fleet, ProductView, ServiceView, SourceView, State as EndpointState, TrafficView,
};
pub use series::Sample;
pub use status::{Kind as SourceKind, ProxyView};

/// The page: HTML, CSS and script in one file.
const PAGE: &str = include_str!("page.html");

/// What to show and how often.
#[derive(Debug, Clone)]
pub struct Options {
    /// The registry to read (ZooKeeper, or the embedded directory).
    pub registry: RegistrySpec,
    /// Status pages (`metrics_address` of proxies and LBs, `host:port`)
    /// to take traffic from. An LB's is not in the registry, so they are
    /// listed.
    pub status_pages: Vec<String>,
    /// How often everything is read again, and the page redrawn.
    pub refresh: Duration,
    /// The longest a heartbeat's echo (connecting included) is awaited.
    pub probe_timeout: Duration,
    /// The longest a status page read may take.
    pub status_timeout: Duration,
    /// The longest connecting to ZooKeeper, or any one read, may take.
    pub registry_timeout: Duration,
    /// How far back the traffic charts go.
    pub history: Duration,
    /// How long an endpoint that left the registry stays on the page.
    pub gone_for: Duration,
    /// The proxy's client keys, to probe endpoints that registered TLS.
    pub tls: Option<Arc<TlsClient>>,
}

impl Options {
    /// Refresh every 2 s, heartbeats and status pages given 1 s, ZooKeeper
    /// 5 s, 10 minutes of traffic history, endpoints shown gone for 5
    /// minutes; no status page.
    pub fn new(registry: RegistrySpec) -> Options {
        Options {
            registry,
            status_pages: Vec::new(),
            refresh: Duration::from_secs(2),
            probe_timeout: Duration::from_secs(1),
            status_timeout: Duration::from_secs(1),
            registry_timeout: Duration::from_secs(5),
            history: Duration::from_secs(600),
            gone_for: Duration::from_secs(300),
            tls: None,
        }
    }
}

/// Serves the dashboard on `listener` (`/` and `/api/fleet`) and keeps
/// its model fresh, until the server fails or the future is dropped.
/// A registry or status page that cannot be read is shown as such on the
/// page, never an error here.
pub async fn serve(listener: tokio::net::TcpListener, options: Options) -> anyhow::Result<()> {
    anyhow::ensure!(
        !options.refresh.is_zero(),
        "the refresh interval must not be zero"
    );
    let collector = fleet::Collector::new(options);
    let (publish, fleet) = watch::channel(collector.to_json());
    let app = axum::Router::new()
        .route("/", get(page))
        .route("/api/fleet", get(api_fleet))
        .with_state(fleet);
    tokio::select! {
        served = async { axum::serve(listener, app).await } => {
            served.context("the dashboard's HTTP server stopped")
        }
        () = collector.run(publish) => unreachable!("the collector runs forever"),
    }
}

async fn page() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-cache")], Html(PAGE))
}

async fn api_fleet(State(fleet): State<watch::Receiver<Arc<[u8]>>>) -> impl IntoResponse {
    let body = fleet.borrow().clone();
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        axum::body::Bytes::from_owner(body),
    )
}
