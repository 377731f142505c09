//! Pieces shared by the service server and the worker: running a handler
//! safely and owning a connection's write side.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;
use rpc_codec::{application_exception, ExceptionKind, Header, Message, MessageType, LEN_PREFIX};
use rpc_transport::{FrameWriter, WriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::Handler;

/// Runs `handler` on one request and returns the frame to send, if any.
/// A panic, a missing reply to a `CALL` or a malformed reply frame becomes
/// an `INTERNAL_ERROR` exception, so the connection keeps working.
pub(crate) async fn run_request(handler: &Arc<dyn Handler>, msg: Message) -> Option<Bytes> {
    let name = msg.name().to_vec();
    let seqid = msg.seqid();
    let oneway = msg.kind() == MessageType::Oneway;
    let result = AssertUnwindSafe(handler.handle(msg)).catch_unwind().await;
    let method = String::from_utf8_lossy(&name);
    let error = match result {
        Ok(_) if oneway => return None,
        Ok(Some(frame)) => match check_reply(&frame, seqid) {
            Ok(()) => return Some(frame),
            Err(why) => why,
        },
        Ok(None) => "the handler returned no reply to a call".to_string(),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            if oneway {
                tracing::error!(%method, panic = %what, "oneway handler panicked");
                return None;
            }
            format!("handler panicked: {what}")
        }
    };
    tracing::error!(%method, seqid, %error, "request failed");
    Some(application_exception(&name, seqid, ExceptionKind::InternalError, &error).freeze())
}

/// A reply must be one well-framed strict `REPLY`/`EXCEPTION` with the
/// request's seqid; anything else would corrupt the stream for everyone.
fn check_reply(frame: &[u8], seqid: i32) -> Result<(), String> {
    let Some(prefix) = frame.get(..LEN_PREFIX) else {
        return Err("the handler's reply is not a frame".into());
    };
    let len = u32::from_be_bytes(prefix.try_into().unwrap()) as usize;
    if len != frame.len() - LEN_PREFIX {
        return Err(format!(
            "the handler's reply frame says {len} bytes but holds {}",
            frame.len() - LEN_PREFIX
        ));
    }
    match Header::peek(&frame[LEN_PREFIX..]) {
        Some(h)
            if frame[LEN_PREFIX] & 0x80 != 0
                && (h.kind == MessageType::Reply as u8 || h.kind == MessageType::Exception as u8)
                && h.seqid == seqid =>
        {
            Ok(())
        }
        Some(h) => Err(format!(
            "the handler's reply has type {} and seqid {} (expected a strict reply with seqid {seqid})",
            h.kind, h.seqid
        )),
        None => Err("the handler's reply has no readable message header".into()),
    }
}

/// Starts the task owning `w`: it writes every frame sent to the returned
/// channel, batching what is queued, and ends (after flushing) when every
/// sender is gone or a write fails.
pub(crate) fn spawn_writer(w: WriteHalf) -> (mpsc::UnboundedSender<Bytes>, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    let task = tokio::spawn(async move {
        let mut w = FrameWriter::new(w);
        while let Some(f) = rx.recv().await {
            w.push(f);
            while let Ok(f) = rx.try_recv() {
                w.push(f);
            }
            if let Err(e) = w.flush().await {
                tracing::debug!(error = %e, "write failed; connection closed");
                return;
            }
        }
        let _ = tokio::io::AsyncWriteExt::shutdown(w.get_mut()).await;
    });
    (tx, task)
}

/// The exception sent for unreadable input before the connection closes.
pub(crate) fn protocol_error(header: Option<Header>, error: &str) -> Bytes {
    let (name, seqid) = header
        .map(|h| (h.bare_name().to_vec(), h.seqid))
        .unwrap_or_default();
    application_exception(&name, seqid, ExceptionKind::ProtocolError, error).freeze()
}
