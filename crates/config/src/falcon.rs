//! The original's statistics push (SPEC §8): every `falcon_interval` (60 s)
//! the open-falcon agent at `falcon_client` gets, for each service and
//! method called in that interval, `{service}.{method}.calls` (calls that
//! ended in it) and `{service}.{method}.avgrt` (their mean latency, ms), as
//! the JSON array its push API (`POST /v1/push`) takes.
//!
//! Pushing runs in a task of its own and only reads the shared counts
//! ([`Methods`]); a push that fails is logged (at most every
//! [`LOG_EVERY`]) and its interval is not sent again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::methods::Methods;
use crate::Config;

/// The agent's push API, when `falcon_client` names only host and port.
const DEFAULT_PATH: &str = "/v1/push";
/// Longest a push may take (less when the interval is shorter).
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// A push that keeps failing is logged this often.
pub const LOG_EVERY: Duration = Duration::from_secs(600);

/// The running push; dropping it stops it.
#[derive(Debug)]
pub struct Pusher {
    task: JoinHandle<()>,
}

impl Drop for Pusher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts pushing `methods` when `falcon_client` is set. A URL that cannot
/// be used is logged and nothing is pushed: serving goes on regardless.
pub fn start(config: &Config, methods: &Arc<Methods>) -> Option<Pusher> {
    let url = config.falcon_client.as_deref()?;
    let target = match Target::parse(url) {
        Ok(t) => t,
        Err(error) => {
            tracing::error!(url, %error, "falcon_client unusable: statistics are not pushed");
            return None;
        }
    };
    let interval = config.falcon_interval;
    tracing::info!(
        url,
        ?interval,
        "pushing per-method statistics to open-falcon"
    );
    let push = Push {
        target,
        endpoint: hostname(),
        interval,
        methods: methods.clone(),
        last: HashMap::new(),
    };
    Some(Pusher {
        task: tokio::spawn(push.run()),
    })
}

/// Where pushes go.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    /// `host:port` to connect to.
    connect: String,
    /// The `Host` header.
    host: String,
    path: String,
}

impl Target {
    /// `http://host[:port][/path]`; the scheme may be left out, and a URL
    /// without a path means the agent's `/v1/push`.
    fn parse(url: &str) -> Result<Target, String> {
        let full = match url.contains("://") {
            true => url.to_string(),
            false => format!("http://{url}"),
        };
        let uri: Uri = full.parse().map_err(|e| format!("{e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err("only http:// is supported".into());
        }
        let authority = uri.authority().ok_or("no host")?;
        let port = authority.port_u16().unwrap_or(80);
        // `http://host` reads as path `/`: only a `/` written out is kept.
        let path = match uri.path_and_query().map(|p| p.as_str()) {
            Some(p) if p != "/" || full.ends_with('/') => p,
            _ => DEFAULT_PATH,
        };
        Ok(Target {
            connect: format!("{}:{port}", authority.host()),
            host: authority.as_str().to_string(),
            path: path.to_string(),
        })
    }
}

/// Totals of one method at the previous push.
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    calls: u64,
    timed: u64,
    latency_sum_us: u64,
}

struct Push {
    target: Target,
    /// The `endpoint` of every item: this machine's name.
    endpoint: String,
    interval: Duration,
    methods: Arc<Methods>,
    /// By `{service}.{method}`.
    last: HashMap<String, Totals>,
}

impl Push {
    async fn run(mut self) {
        let mut tick = tokio::time::interval_at(Instant::now() + self.interval, self.interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut log = FailureLog::default();
        loop {
            tick.tick().await;
            let items = self.items(unix_now());
            if items.is_empty() {
                continue;
            }
            let body = Value::Array(items).to_string();
            let limit = PUSH_TIMEOUT.min(self.interval);
            let result = match tokio::time::timeout(limit, post(&self.target, body)).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {limit:?}")),
            };
            match result {
                Ok(()) => log.succeeded(),
                Err(error) => log.failed(&self.target, &error),
            }
        }
    }

    /// The items of one push: the methods called since the last one.
    fn items(&mut self, timestamp: u64) -> Vec<Value> {
        let step = self.interval.as_secs_f64().round().max(1.0) as u64;
        let item = |metric: String, value: Value| {
            json!({
                "endpoint": self.endpoint,
                "metric": metric,
                "timestamp": timestamp,
                "step": step,
                "value": value,
                "counterType": "GAUGE",
                "tags": "",
            })
        };
        let mut items = Vec::new();
        for m in self.methods.all() {
            let s = m.snapshot();
            let now = Totals {
                calls: s.calls(),
                timed: s.timed(),
                latency_sum_us: s.latency_sum_us,
            };
            let name = format!("{}.{}", m.service(), m.method());
            let before = self.last.insert(name.clone(), now).unwrap_or_default();
            let calls = now.calls.wrapping_sub(before.calls);
            if calls == 0 {
                continue;
            }
            items.push(item(format!("{name}.calls"), calls.into()));
            // Oneway calls are counted but have no latency.
            let timed = now.timed.wrapping_sub(before.timed);
            if timed > 0 {
                let sum_us = now.latency_sum_us.wrapping_sub(before.latency_sum_us);
                let ms = sum_us as f64 / timed as f64 / 1000.0;
                items.push(item(
                    format!("{name}.avgrt"),
                    json!((ms * 1000.0).round() / 1000.0),
                ));
            }
        }
        items
    }
}

/// One HTTP/1.1 POST of `body` (JSON); an error unless answered 2xx.
async fn post(target: &Target, body: String) -> Result<(), String> {
    let stream = tokio::net::TcpStream::connect(&target.connect)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", target.connect))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let request = Request::builder()
        .method(Method::POST)
        .uri(&target.path)
        .header(HOST, &target.host)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let response = sender.send_request(request).await?;
        let status = response.status();
        response.into_body().collect().await?;
        Ok::<_, hyper::Error>(status)
    };
    // The connection is driven beside the exchange and dropped after it.
    let status = tokio::select! {
        r = exchange => r.map_err(|e| e.to_string())?,
        r = conn => return Err(match r {
            Ok(()) => "connection closed before the answer".into(),
            Err(e) => e.to_string(),
        }),
    };
    match status.is_success() {
        true => Ok(()),
        false => Err(format!("answered {status}")),
    }
}

/// Logs a failing push once, then at most every [`LOG_EVERY`], and its
/// recovery.
#[derive(Default)]
struct FailureLog {
    failing: bool,
    logged_at: Option<Instant>,
    unlogged: u64,
}

impl FailureLog {
    fn failed(&mut self, target: &Target, error: &str) {
        self.failing = true;
        self.unlogged += 1;
        if self.logged_at.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            return;
        }
        tracing::warn!(
            to = %target.connect,
            error,
            failures = self.unlogged,
            "open-falcon push failed (logged at most every {} s)",
            LOG_EVERY.as_secs()
        );
        self.logged_at = Some(Instant::now());
        self.unlogged = 0;
    }

    fn succeeded(&mut self) {
        if std::mem::take(&mut self.failing) {
            tracing::info!("open-falcon push works again");
            *self = FailureLog::default();
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// This machine's name, the `endpoint` open-falcon files the series under.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is valid for its whole length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match rc == 0 && len > 0 {
        true => String::from_utf8_lossy(&buf[..len]).into_owned(),
        false => "localhost".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::MethodTally;

    #[test]
    fn urls_of_the_agent() {
        let t = Target::parse("http://127.0.0.1:1988/v1/push").unwrap();
        assert_eq!(
            (t.connect.as_str(), t.host.as_str(), t.path.as_str()),
            ("127.0.0.1:1988", "127.0.0.1:1988", "/v1/push")
        );
        let bare = Target::parse("agent:1988").unwrap();
        assert_eq!(
            (bare.connect.as_str(), bare.path.as_str()),
            ("agent:1988", "/v1/push")
        );
        let root = Target::parse("http://agent:1988/").unwrap();
        assert_eq!(root.path, "/");
        let t = Target::parse("http://agent/custom?x=1").unwrap();
        assert_eq!(
            (t.connect.as_str(), t.path.as_str()),
            ("agent:80", "/custom?x=1")
        );
        assert!(Target::parse("https://agent/v1/push").is_err());
        assert!(Target::parse("http://").is_err());
    }

    #[test]
    fn each_push_holds_what_was_called_since_the_last() {
        let methods = Arc::new(Methods::default());
        let mut push = Push {
            target: Target::parse("127.0.0.1:1").unwrap(),
            endpoint: "host-1".into(),
            interval: Duration::from_secs(60),
            methods: methods.clone(),
            last: HashMap::new(),
        };
        let mut t = MethodTally::default();
        let echo = t.id(b"echo", || methods.resolve(b"svc", b"echo"));
        let idle = t.id(b"idle", || methods.resolve(b"svc", b"idle"));
        t.record(echo, 0, Some(Duration::from_millis(2)));
        t.record(echo, 1, Some(Duration::from_millis(4)));
        t.record(echo, 0, None);
        t.flush();
        let items = push.items(1_700_000_000);
        let expected = json!([
            {"endpoint": "host-1", "metric": "svc.echo.calls", "timestamp": 1_700_000_000u64,
             "step": 60, "value": 3, "counterType": "GAUGE", "tags": ""},
            {"endpoint": "host-1", "metric": "svc.echo.avgrt", "timestamp": 1_700_000_000u64,
             "step": 60, "value": 3.0, "counterType": "GAUGE", "tags": ""},
        ]);
        assert_eq!(Value::Array(items), expected);
        // Nothing new: nothing to push.
        assert!(push.items(1_700_000_060).is_empty());
        t.record(idle, 0, Some(Duration::from_micros(1500)));
        t.flush();
        let items = push.items(1_700_000_120);
        let metrics: Vec<_> = items
            .iter()
            .map(|i| (i["metric"].clone(), i["value"].clone()))
            .collect();
        assert_eq!(
            metrics,
            [
                (json!("svc.idle.calls"), json!(1)),
                (json!("svc.idle.avgrt"), json!(1.5))
            ]
        );
    }
}
