//! One client (L1) connection: read requests, route each, and write the
//! replies back in the order the requests arrived (SPEC §3).
//!
//! Each request becomes a future in a `FuturesOrdered`, so pipelined
//! requests run concurrently while replies leave in arrival order. The
//! number of unanswered requests is capped: at the cap the task simply
//! stops reading, and TCP pushes back on the client.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use rpc_codec::{
    application_exception, heartbeat_reply, ExceptionKind, FrameCodec, FrameError, Header, Message,
    MessageType,
};
use rpc_transport::{FrameReader, FrameWriter, Stream};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::forward::{self, Answer};
use crate::routes::Routes;

pub struct ClientSettings {
    pub max_frame: usize,
    pub max_inflight: usize,
    pub rpc_timeout: Duration,
    pub frame_timeout: Duration,
}

type Pending = Pin<Box<dyn Future<Output = Answer> + Send>>;

/// Replies waiting for a client that does not read: beyond this, stop
/// reading its requests.
const WRITE_BUFFER_LIMIT: usize = 4 << 20;

pub async fn serve(
    stream: Stream,
    routes: watch::Receiver<Arc<Routes>>,
    settings: Arc<ClientSettings>,
    mut shutdown: watch::Receiver<bool>,
) {
    let peer = stream.peer();
    let (r, w) = stream.into_split();
    let mut reader = FrameReader::new(r, FrameCodec::new(settings.max_frame))
        .with_frame_timeout(settings.frame_timeout);
    let mut writer = FrameWriter::new(w);
    let mut pending: FuturesOrdered<Pending> = FuturesOrdered::new();
    // Set when reading must stop: the final frame to send after the
    // replies already owed (a protocol error), if any.
    let mut closing: Option<Option<Bytes>> = None;

    loop {
        if closing.is_some() && pending.is_empty() && writer.is_empty() {
            break;
        }
        let reading = closing.is_none()
            && pending.len() < settings.max_inflight
            && writer.queued_bytes() < WRITE_BUFFER_LIMIT;
        if !reading {
            reader.reset_frame_clock();
        }
        tokio::select! {
            biased;
            Some(answer) = pending.next(), if !pending.is_empty() => {
                if let Some(frame) = answer {
                    writer.push(frame);
                }
                // Collect every other reply that is already done.
                while let Some(Some(answer)) = pending.next().now_or_never() {
                    if let Some(frame) = answer {
                        writer.push(frame);
                    }
                }
            }
            // Writing races reading, so a client that sends a long pipeline
            // before reading cannot deadlock with us.
            written = writer.write_some(), if !writer.is_empty() => {
                if let Err(e) = written {
                    tracing::debug!(%peer, error = %e, "client write failed");
                    return;
                }
            }
            frame = reader.next(), if reading => {
                match frame {
                    None => closing = Some(None),
                    Some(Ok(frame)) => match Message::parse_or_peek(frame) {
                        Ok(msg) => {
                            if let Some(p) = request(msg, &routes, &settings) {
                                pending.push_back(p);
                            }
                        }
                        Err((e, header)) => {
                            tracing::warn!(%peer, error = %e, "bad message from client, closing");
                            closing = Some(Some(protocol_error(&e.to_string(), header)));
                        }
                    },
                    Some(Err(e)) => {
                        if let FrameError::Io(io) = &e {
                            tracing::debug!(%peer, error = %io, "client read failed");
                            closing = Some(None);
                        } else {
                            tracing::warn!(%peer, error = %e, "bad frame from client, closing");
                            // The header of an oversized frame may already be buffered.
                            let header = reader.buffered().get(4..).and_then(Header::peek);
                            closing = Some(Some(protocol_error(&e.to_string(), header)));
                        }
                    }
                }
            }
            _ = shutdown.changed(), if closing.is_none() => closing = Some(None),
        }
    }
    if let Some(Some(frame)) = closing {
        writer.push(frame);
    }
    let _ = writer.flush().await;
}

/// Starts one request; `None` when nothing is to be answered.
fn request(
    mut msg: Message,
    routes: &watch::Receiver<Arc<Routes>>,
    settings: &ClientSettings,
) -> Option<Pending> {
    match msg.kind() {
        MessageType::Call | MessageType::Oneway => {
            let service = String::from_utf8_lossy(msg.service().unwrap_or_default()).into_owned();
            msg.strip_service();
            if msg.kind() == MessageType::Oneway {
                forward::oneway(routes, &service, msg);
                return None;
            }
            let deadline = Instant::now() + settings.rpc_timeout;
            Some(Box::pin(forward::call(
                routes.clone(),
                service,
                msg,
                deadline,
            )))
        }
        MessageType::Heartbeat => {
            let reply = heartbeat_reply(msg.seqid()).freeze();
            Some(Box::pin(std::future::ready(Some(reply))))
        }
        other => {
            let text = format!("unexpected message type {other:?} from a client");
            let reply = application_exception(
                msg.method(),
                msg.seqid(),
                ExceptionKind::ProtocolError,
                &text,
            );
            Some(Box::pin(std::future::ready(Some(reply.freeze()))))
        }
    }
}

/// The reply to unreadable input: a PROTOCOL_ERROR exception, named and
/// numbered after the offending message when its header could be read.
fn protocol_error(text: &str, header: Option<Header>) -> Bytes {
    let (name, seqid) = match &header {
        Some(h) => (h.bare_name(), h.seqid),
        None => (&b""[..], 0),
    };
    application_exception(name, seqid, ExceptionKind::ProtocolError, text).freeze()
}
