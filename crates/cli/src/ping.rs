//! `rpcctl ping SERVICE`: one SPEC §4 heartbeat to every registered
//! endpoint of a service, on a connection of its own, timing the echo;
//! with `--proxy`, calls through a proxy too.
//!
//! A proxy answers a client's heartbeat itself (SPEC §3), so the path
//! through it is tried with calls of [`PING_METHOD`], a method no service
//! has: an endpoint answers `UNKNOWN_METHOD` without running any handler,
//! which proves the proxy routed the call and the service read it.

use std::time::Duration;

use futures::future::join_all;
use futures::{SinkExt, StreamExt};
use rpc_codec::{
    encode_message, read_application_exception, ExceptionKind, FrameCodec, Message, MessageType,
};
use rpc_dashboard::probe::heartbeat_rtt;
use rpc_registry::Endpoint;
use rpc_transport::tls::TlsClient;
use rpc_transport::{Address, Stream};
use serde::Serialize;
use tokio::time::{timeout_at, Instant};
use tokio_util::codec::Framed;

use crate::table::Table;

/// The `--json` document.
#[derive(Serialize)]
pub struct Report {
    pub product: String,
    pub service: String,
    /// How many endpoints echoed the heartbeat.
    pub answered: usize,
    /// In registry order (by `service_id`).
    pub endpoints: Vec<Outcome>,
    /// With `--proxy`: the calls through the proxy.
    pub proxy: Option<ThroughProxy>,
}

/// The method `--proxy` calls: no service has it.
pub const PING_METHOD: &str = "__rpcctl_ping__";

/// Calls of [`PING_METHOD`] through a proxy, one after the other on one
/// connection: how many reached the service (answered by an endpoint with
/// `UNKNOWN_METHOD`, or a reply), their round trips, and the first
/// failure (the proxy's exception or a transport error), after which no
/// more are sent.
#[derive(Serialize)]
pub struct ThroughProxy {
    pub address: String,
    pub sent: usize,
    pub reached: usize,
    pub rtt_us: Vec<u64>,
    pub error: Option<String>,
}

/// One endpoint: `rtt_us` (microseconds from sending the heartbeat to
/// reading its echo) when it answered, else `error`; the other is `null`.
#[derive(Serialize)]
pub struct Outcome {
    pub frontend: String,
    pub service_id: String,
    pub hostname: String,
    pub rtt_us: Option<u64>,
    pub error: Option<String>,
}

/// Pings every endpoint at once, each bounded by `limit` (connecting
/// included), so the whole run takes at most about `limit`; endpoints that
/// registered TLS through `tls`.
pub async fn ping_all(
    product: &str,
    service: &str,
    endpoints: &[Endpoint],
    tls: Option<&TlsClient>,
    limit: Duration,
) -> Report {
    let outcomes = join_all(endpoints.iter().map(|ep| async move {
        let result = heartbeat_rtt(&ep.frontend, ep.tls, tls, limit).await;
        Outcome {
            frontend: ep.frontend.clone(),
            service_id: ep.service_id.clone(),
            hostname: ep.hostname.clone(),
            rtt_us: result.as_ref().ok().map(|d| d.as_micros() as u64),
            error: result.err(),
        }
    }))
    .await;
    Report {
        product: product.to_string(),
        service: service.to_string(),
        answered: outcomes.iter().filter(|o| o.rtt_us.is_some()).count(),
        endpoints: outcomes,
        proxy: None,
    }
}

/// Makes `count` calls of [`PING_METHOD`] to `service` through the proxy
/// at `proxy`, each (and the connecting) bounded by `limit`.
pub async fn through_proxy(
    proxy: &Address,
    service: &str,
    count: usize,
    limit: Duration,
) -> ThroughProxy {
    let mut out = ThroughProxy {
        address: proxy.to_string(),
        sent: 0,
        reached: 0,
        rtt_us: Vec::with_capacity(count),
        error: None,
    };
    let late = || format!("no answer within {} ms", limit.as_millis());
    let stream = match tokio::time::timeout(limit, Stream::connect(proxy)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            out.error = Some(format!("connect: {e}"));
            return out;
        }
        Err(_) => {
            out.error = Some(format!("connect: {}", late()));
            return out;
        }
    };
    let mut io = Framed::new(stream, FrameCodec::default());
    let name = format!("{service}:{PING_METHOD}");
    for seqid in 1..=count as i32 {
        // An empty argument struct: just its stop byte.
        let call = encode_message(MessageType::Call, name.as_bytes(), seqid, &[0]);
        let sent = Instant::now();
        out.sent += 1;
        let exchange = async {
            io.send(call.freeze())
                .await
                .map_err(|e| format!("send: {e}"))?;
            match io.next().await {
                Some(Ok(frame)) => Message::parse(frame).map_err(|e| format!("bad answer: {e}")),
                Some(Err(e)) => Err(format!("bad answer: {e}")),
                None => Err("the proxy closed the connection".into()),
            }
        };
        let answer = match timeout_at(sent + limit, exchange).await {
            Ok(Ok(m)) if m.seqid() != seqid => {
                Err(format!("answered seqid {} to call {seqid}", m.seqid()))
            }
            Ok(answer) => answer.and_then(|m| reached(&m)),
            Err(_) => Err(late()),
        };
        match answer {
            Ok(()) => {
                out.reached += 1;
                out.rtt_us.push(sent.elapsed().as_micros() as u64);
            }
            Err(e) => {
                out.error = Some(e);
                break;
            }
        }
    }
    out
}

/// Whether the answer to a [`PING_METHOD`] call came from the service.
fn reached(m: &Message) -> Result<(), String> {
    match m.kind() {
        MessageType::Reply => Ok(()),
        MessageType::Exception => match read_application_exception(m.body()) {
            Ok(e) if e.kind == ExceptionKind::UnknownMethod as i32 => Ok(()),
            Ok(e) => Err(e.message),
            Err(e) => Err(format!("bad exception: {e}")),
        },
        other => Err(format!("answered {other:?}")),
    }
}

impl Report {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serializes") + "\n"
    }

    /// One line per endpoint, then how many answered.
    pub fn to_table(&self) -> String {
        let mut t = Table::new(&["FRONTEND", "SERVICE_ID", "HOSTNAME", "RESULT"]);
        for o in &self.endpoints {
            let result = match (&o.rtt_us, &o.error) {
                (Some(us), _) => format!("{us} µs"),
                (None, Some(e)) => format!("error: {e}"),
                (None, None) => String::new(),
            };
            t.row(vec![
                o.frontend.clone(),
                o.service_id.clone(),
                o.hostname.clone(),
                result,
            ]);
        }
        let mut text = format!(
            "{}{} of {} endpoints of {}/{} answered\n",
            t.render(),
            self.answered,
            self.endpoints.len(),
            self.product,
            self.service
        );
        if let Some(p) = &self.proxy {
            text += &format!(
                "through the proxy at {}: {} of {} calls reached {}",
                p.address, p.reached, p.sent, self.service
            );
            if let (Some(min), Some(max)) = (p.rtt_us.iter().min(), p.rtt_us.iter().max()) {
                let avg = p.rtt_us.iter().sum::<u64>() / p.rtt_us.len() as u64;
                text += &format!(" (min/avg/max {min}/{avg}/{max} µs)");
            }
            if let Some(e) = &p.error {
                text += &format!("; error: {e}");
            }
            text.push('\n');
        }
        text
    }

    /// Everything answered: at least one endpoint, and every call through
    /// the proxy when there were any.
    pub fn ok(&self) -> bool {
        self.answered > 0 && self.proxy.as_ref().is_none_or(|p| p.error.is_none())
    }
}
