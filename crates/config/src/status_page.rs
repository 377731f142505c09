//! The HTTP status page a server binary exposes on `metrics_address`:
//! Prometheus text at `/metrics`, a JSON snapshot at `/status` and a small
//! self-refreshing dashboard at `/`. Each binary says what goes on its page
//! ([`StatusPage`]); serving it and the dashboard's look are shared here.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::methods::{Methods, BUCKETS, LATENCY_BOUNDS_US, MAX_OUTCOMES};

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;

/// What a binary shows. Called on every request to the page, never on the
/// request path of the server itself.
pub trait StatusPage: Send + Sync + 'static {
    /// Prometheus (OpenMetrics) text exposition.
    fn metrics(&self) -> String;
    /// The `/status` document.
    fn status(&self) -> serde_json::Value;
    /// The dashboard's HTML (see [`Dashboard`]).
    fn dashboard(&self) -> String;
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `addr`, serves `page` on it in the background and returns the
/// address actually bound (port 0 resolved).
pub async fn start(addr: &str, page: Arc<dyn StatusPage>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tracing::info!(address = %bound, "metrics and dashboard");
    tokio::spawn(serve(listener, page));
    Ok(bound)
}

/// Serves `/metrics`, `/status` and `/` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, page: Arc<dyn StatusPage>) {
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/", get(dashboard))
        .with_state(page);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "metrics endpoint stopped");
    }
}

async fn metrics(State(page): State<Arc<dyn StatusPage>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, OPENMETRICS)], page.metrics())
}

async fn status(State(page): State<Arc<dyn StatusPage>>) -> impl IntoResponse {
    axum::Json(page.status())
}

async fn dashboard(State(page): State<Arc<dyn StatusPage>>) -> Html<String> {
    Html(page.dashboard())
}

/// A dashboard page: a title, one line of summary with links to the other
/// two views, then one table.
pub struct Dashboard {
    html: String,
}

/// One table cell.
pub enum Cell {
    Text(String),
    /// A state, styled by the page's CSS class of the same name.
    State(String),
}

impl Dashboard {
    /// `summary` is HTML (escape what comes from outside); `state_css`
    /// styles the [`Cell::State`] classes, e.g. `.Up{color:#080}`.
    pub fn new(title: &str, state_css: &str, summary: &str) -> Dashboard {
        let title = escape(title);
        let mut html = format!(
            "<!doctype html><meta charset=utf-8><meta http-equiv=refresh content=2>\
             <title>{title}</title><style>body{{font:14px sans-serif;margin:2em}}\
             table{{border-collapse:collapse}}td,th{{padding:4px 10px;border-bottom:1px solid #ddd;\
             text-align:left}}{state_css}</style><h1>{title}</h1>"
        );
        let _ = write!(
            html,
            "<p>{summary} <a href=/metrics>metrics</a> · <a href=/status>status (JSON)</a></p>"
        );
        Dashboard { html }
    }

    /// Opens a table with its header row (closing the one before, if any).
    pub fn table(&mut self, headers: &[&str]) {
        if self.html.ends_with("</tr>") {
            self.html.push_str("</table>");
        }
        self.html.push_str("<table><tr>");
        for h in headers {
            let _ = write!(self.html, "<th>{}</th>", escape(h));
        }
        self.html.push_str("</tr>");
    }

    pub fn row(&mut self, cells: impl IntoIterator<Item = Cell>) {
        self.html.push_str("<tr>");
        for cell in cells {
            match cell {
                Cell::Text(t) => {
                    let _ = write!(self.html, "<td>{}</td>", escape(&t));
                }
                Cell::State(s) => {
                    let _ = write!(self.html, "<td class={0}>{0}</td>", escape(&s));
                }
            }
        }
        self.html.push_str("</tr>");
    }

    /// A section heading (closing the table before, if any).
    pub fn heading(&mut self, text: &str) {
        if self.html.ends_with("</tr>") {
            self.html.push_str("</table>");
        }
        let _ = write!(self.html, "<h2>{}</h2>", escape(text));
    }

    /// What runs here: version, uptime, pid, and the settings that matter.
    pub fn about(&mut self, about: &About) {
        let _ = write!(
            self.html,
            "<p>{} {} · up {} · pid {}</p><p><small>",
            escape(about.program),
            escape(about.version),
            crate::human_duration(about.started.elapsed()),
            std::process::id()
        );
        for (i, (k, v)) in about.settings.iter().enumerate() {
            let sep = if i == 0 { "" } else { " · " };
            let _ = write!(self.html, "{sep}{} = {}", escape(k), escape(v));
        }
        self.html.push_str("</small></p>");
    }

    /// A table of [`Recent::traffic`].
    pub fn traffic(&mut self, traffic: &[Traffic]) {
        self.heading("Traffic, last seconds");
        self.table(&[
            "service",
            "req/s",
            "errors/s",
            "error %",
            "p99 ≤ ms",
            "over s",
        ]);
        for t in traffic {
            let pct = if t.rps > 0.0 {
                format!("{:.2}", 100.0 * t.errors_ps / t.rps)
            } else {
                "—".into()
            };
            self.row([
                Cell::Text(t.service.clone()),
                Cell::Text(format!("{:.1}", t.rps)),
                Cell::Text(format!("{:.1}", t.errors_ps)),
                Cell::Text(pct),
                Cell::Text(t.p99_ms.map_or("—".into(), |v| format!("{v}"))),
                Cell::Text(format!("{:.1}", t.window_s)),
            ]);
        }
        if traffic.is_empty() {
            self.row([Cell::Text("no calls yet".into())]);
        }
    }

    /// Closes the table and returns the page.
    pub fn finish(mut self) -> String {
        self.html.push_str("</table>");
        self.html
    }
}

/// The process behind a status page.
#[derive(Debug, Clone)]
pub struct About {
    pub program: &'static str,
    pub version: &'static str,
    pub started: Instant,
    /// The configuration worth seeing at a glance, in order.
    pub settings: Vec<(String, String)>,
}

impl About {
    pub fn new(program: &'static str, version: &'static str) -> About {
        About {
            program,
            version,
            started: Instant::now(),
            settings: Vec::new(),
        }
    }

    pub fn set(mut self, key: &str, value: impl ToString) -> About {
        self.settings.push((key.into(), value.to_string()));
        self
    }

    /// For `/status`.
    pub fn to_json(&self) -> serde_json::Value {
        let settings: serde_json::Map<String, serde_json::Value> = self
            .settings
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
        serde_json::json!({
            "program": self.program,
            "version": self.version,
            "uptime_s": self.started.elapsed().as_secs(),
            "pid": std::process::id(),
            "settings": settings,
        })
    }
}

/// One service's traffic over the last seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Traffic {
    pub service: String,
    pub rps: f64,
    pub errors_ps: f64,
    /// Upper bound of the latency bucket holding the 99th percentile.
    pub p99_ms: Option<f64>,
    /// Seconds the rates are taken over.
    pub window_s: f64,
}

impl Traffic {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "service": self.service,
            "requests_per_s": self.rps,
            "errors_per_s": self.errors_ps,
            "p99_ms_at_most": self.p99_ms,
            "window_s": self.window_s,
        })
    }
}

/// Per-service rates from the per-method counts, taken between the counts
/// now and a sample a few seconds old: samples are read when the page is
/// drawn (it refreshes itself every 2 s), never on the request path.
pub struct Recent {
    methods: Arc<Methods>,
    /// Outcomes that are not errors (a reply, a oneway call).
    fine: Vec<usize>,
    samples: Mutex<VecDeque<(Instant, BTreeMap<String, Totals>)>>,
}

#[derive(Debug, Clone, Default)]
struct Totals {
    calls: u64,
    errors: u64,
    buckets: [u64; BUCKETS],
}

/// Rates are taken over at most this long, and at least `MIN_WINDOW`.
const WINDOW: Duration = Duration::from_secs(10);
const MIN_WINDOW: Duration = Duration::from_millis(500);

impl Recent {
    pub fn new(methods: Arc<Methods>, fine: &[usize]) -> Recent {
        Recent {
            methods,
            fine: fine.to_vec(),
            samples: Mutex::new(VecDeque::new()),
        }
    }

    fn totals(&self) -> BTreeMap<String, Totals> {
        let mut by_service: BTreeMap<String, Totals> = BTreeMap::new();
        for m in self.methods.all() {
            let snap = m.snapshot();
            let t = by_service.entry(m.service().to_string()).or_default();
            for (outcome, n) in snap.outcomes.iter().enumerate().take(MAX_OUTCOMES) {
                t.calls += n;
                if !self.fine.contains(&outcome) {
                    t.errors += n;
                }
            }
            for (b, n) in t.buckets.iter_mut().zip(snap.buckets) {
                *b += n;
            }
        }
        by_service
    }

    /// Each service's rates since the newest sample at least
    /// half a second old (none on the first look).
    pub fn traffic(&self) -> Vec<Traffic> {
        self.traffic_at(Instant::now())
    }

    fn traffic_at(&self, now: Instant) -> Vec<Traffic> {
        let current = self.totals();
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        let base = samples
            .iter()
            .rev()
            .find(|(at, _)| now.saturating_duration_since(*at) >= MIN_WINDOW);
        let out = match base {
            None => Vec::new(),
            Some((at, old)) => {
                let secs = now.saturating_duration_since(*at).as_secs_f64();
                current
                    .iter()
                    .filter_map(|(service, t)| {
                        let zero = Totals::default();
                        let o = old.get(service).unwrap_or(&zero);
                        let calls = t.calls.saturating_sub(o.calls);
                        if calls == 0 {
                            return None;
                        }
                        let deltas: Vec<u64> = t
                            .buckets
                            .iter()
                            .zip(o.buckets)
                            .map(|(n, o)| n.saturating_sub(o))
                            .collect();
                        Some(Traffic {
                            service: service.clone(),
                            rps: calls as f64 / secs,
                            errors_ps: t.errors.saturating_sub(o.errors) as f64 / secs,
                            p99_ms: p99_bound_ms(&deltas),
                            window_s: secs,
                        })
                    })
                    .collect()
            }
        };
        samples.push_back((now, current));
        // Keep one sample older than the window, so rates span up to it.
        while samples.len() > 2 && now.saturating_duration_since(samples[1].0) >= WINDOW {
            samples.pop_front();
        }
        out
    }
}

/// The upper bound (ms) of the bucket where the 99th percentile falls;
/// `None` without timed calls or when it falls past the last bound.
fn p99_bound_ms(buckets: &[u64]) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (total as f64 * 0.99).ceil() as u64;
    let mut seen = 0;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return LATENCY_BOUNDS_US.get(i).map(|us| *us as f64 / 1000.0);
        }
    }
    None
}

/// Text made safe to put in HTML.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_is_taken_between_samples_per_service() {
        let methods = Arc::new(Methods::new(8));
        // Outcome 0 is a reply, 1 an error, 7 a oneway call.
        let recent = Recent::new(methods.clone(), &[0, 7]);
        let t0 = Instant::now();
        assert!(
            recent.traffic_at(t0).is_empty(),
            "no rates before a second sample"
        );
        let mut tally = crate::methods::MethodTally::default();
        let id = tally.id(b"m", || methods.resolve(b"echo", b"m"));
        for _ in 0..98 {
            tally.record(id, 0, Some(Duration::from_micros(300)));
        }
        tally.record(id, 1, Some(Duration::from_millis(40)));
        tally.record(id, 7, None);
        tally.flush();
        let t = recent.traffic_at(t0 + Duration::from_secs(2));
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].service, "echo");
        assert_eq!((t[0].rps, t[0].errors_ps, t[0].window_s), (50.0, 0.5, 2.0));
        // 99 timed calls: the 99th slowest is the 40 ms one.
        assert_eq!(t[0].p99_ms, Some(50.0));
        // Nothing new since: the service drops out.
        assert!(recent.traffic_at(t0 + Duration::from_secs(4)).is_empty());
    }

    #[test]
    fn p99_is_the_bound_of_its_bucket() {
        let mut b = [0u64; BUCKETS];
        assert_eq!(p99_bound_ms(&b), None);
        b[0] = 100;
        assert_eq!(p99_bound_ms(&b), Some(LATENCY_BOUNDS_US[0] as f64 / 1000.0));
        b[BUCKETS - 1] = 1000;
        assert_eq!(p99_bound_ms(&b), None, "past the last bound");
    }

    #[test]
    fn durations_read_as_people_say_them() {
        let d = |s| crate::human_duration(Duration::from_secs(s));
        assert_eq!(
            (d(5), d(192), d(7500), d(356_400)),
            ("5s".into(), "3m12s".into(), "2h05m".into(), "4d03h".into())
        );
    }

    #[test]
    fn about_shows_version_uptime_and_settings() {
        let about = About::new("rpc-x", "1.2.3")
            .set("rpc_timeout", "15s")
            .set("product", "<t>");
        let mut d = Dashboard::new("x", "", "");
        d.about(&about);
        let html = d.finish();
        assert!(html.contains("rpc-x 1.2.3 · up 0s · pid "), "{html}");
        assert!(
            html.contains("rpc_timeout = 15s · product = &lt;t&gt;"),
            "{html}"
        );
        let j = about.to_json();
        assert_eq!(
            (j["version"].as_str(), j["settings"]["rpc_timeout"].as_str()),
            (Some("1.2.3"), Some("15s"))
        );
    }

    #[test]
    fn dashboard_escapes_cells_and_styles_states() {
        let mut d = Dashboard::new("svc", ".Up{color:#080}", "1 open.");
        d.table(&["name", "state"]);
        d.row([Cell::Text("<a&b>".into()), Cell::State("Up".into())]);
        let html = d.finish();
        assert!(html.contains("<title>svc</title>"), "{html}");
        assert!(
            html.contains("text-align:left}.Up{color:#080}</style>"),
            "{html}"
        );
        assert!(html.contains("<p>1 open. <a href=/metrics>"), "{html}");
        assert!(
            html.ends_with("<tr><th>name</th><th>state</th></tr><tr><td>&lt;a&amp;b&gt;</td><td class=Up>Up</td></tr></table>"),
            "{html}"
        );
    }
}
