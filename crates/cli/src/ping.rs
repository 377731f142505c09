//! `rpcctl ping SERVICE`: one SPEC §4 heartbeat to every registered
//! endpoint of a service, on a connection of its own, timing the echo.

use std::time::Duration;

use futures::future::join_all;
use futures::{SinkExt, StreamExt};
use rpc_codec::{heartbeat, FrameCodec, Message, MessageType};
use rpc_registry::Endpoint;
use rpc_transport::{Address, Stream};
use serde::Serialize;
use tokio::time::{timeout_at, Instant};
use tokio_util::codec::Framed;

use crate::table::Table;

/// The seqid of our heartbeat; the echo must carry it back.
const SEQID: i32 = 1;

/// The `--json` document.
#[derive(Serialize)]
pub struct Report {
    pub product: String,
    pub service: String,
    /// How many endpoints echoed the heartbeat.
    pub answered: usize,
    /// In registry order (by `service_id`).
    pub endpoints: Vec<Outcome>,
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
/// included), so the whole run takes at most about `limit`.
pub async fn ping_all(
    product: &str,
    service: &str,
    endpoints: &[Endpoint],
    limit: Duration,
) -> Report {
    let outcomes = join_all(endpoints.iter().map(|ep| async move {
        let result = ping(&ep.frontend, limit).await;
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
    }
}

/// Connects to `frontend` (`host:port` or a socket path), sends one
/// heartbeat and returns how long its echo took, or why there was none.
async fn ping(frontend: &str, limit: Duration) -> Result<Duration, String> {
    let deadline = Instant::now() + limit;
    let address: Address = frontend.parse()?;
    let stream = match timeout_at(deadline, Stream::connect(&address)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("connect: {e}")),
        Err(_) => {
            return Err(format!(
                "connect: no answer within {} ms",
                limit.as_millis()
            ))
        }
    };
    let mut io = Framed::new(stream, FrameCodec::default());
    let sent = Instant::now();
    let exchange = async {
        io.send(heartbeat(SEQID).freeze())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let frame = match io.next().await {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Err(format!("bad reply: {e}")),
            None => return Err("closed the connection without echoing".into()),
        };
        let received = Instant::now();
        match Message::peek_frame(&frame) {
            Ok((MessageType::Heartbeat, SEQID)) => Ok(received - sent),
            Ok((kind, seqid)) => Err(format!(
                "answered {kind:?} with seqid {seqid} instead of echoing the heartbeat"
            )),
            Err(e) => Err(format!("bad reply: {e}")),
        }
    };
    match timeout_at(deadline, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!("no echo within {} ms", limit.as_millis())),
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
        format!(
            "{}{} of {} endpoints of {}/{} answered\n",
            t.render(),
            self.answered,
            self.endpoints.len(),
            self.product,
            self.service
        )
    }
}
