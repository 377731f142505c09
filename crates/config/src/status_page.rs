//! The HTTP status page a server binary exposes on `metrics_address`:
//! Prometheus text at `/metrics`, a JSON snapshot at `/status` and a small
//! self-refreshing dashboard at `/`. Each binary says what goes on its page
//! ([`StatusPage`]); serving it and the dashboard's look are shared here.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

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

    /// Closes the table and returns the page.
    pub fn finish(mut self) -> String {
        self.html.push_str("</table>");
        self.html
    }
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
