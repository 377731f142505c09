//! Pieces shared by the service server and the worker: running a handler
//! safely, inline when it can be.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;
use rpc_codec::{
    application_exception, ExceptionKind, Header, Message, MessageType, NameBuf, LEN_PREFIX,
};
use tokio::sync::mpsc;

use crate::tracker::Tracker;
use crate::Handler;

/// The outcome of a request that ran on its own task, tagged by whoever
/// started it: the reply frame, or `None` for a oneway call.
pub(crate) type Done<T> = (T, Option<Bytes>);

/// Starts one request. The handler's future is polled once right here, so
/// a handler that needs no waiting (an echo, a lookup in memory) costs no
/// task, and its reply joins the write batch of the frames read with it;
/// `Some(outcome)` is that reply. Otherwise the future moves to a task of
/// its own (counted by `tracker` until it ends), which sends
/// `(tag, outcome)` on `done`, and this returns `None`.
///
/// A handler whose first poll does heavy work therefore holds up its
/// connection while it runs; such work belongs on `spawn_blocking`.
pub(crate) fn start<T: Send + 'static>(
    handler: &Arc<dyn Handler>,
    msg: Message,
    tracker: &Arc<Tracker>,
    done: &mpsc::UnboundedSender<Done<T>>,
    tag: T,
) -> Option<Option<Bytes>> {
    let mut request = Box::pin(run_request(handler.clone(), msg));
    if let Some(outcome) = request.as_mut().now_or_never() {
        return Some(outcome);
    }
    let (guard, done) = (tracker.begin(), done.clone());
    tokio::spawn(async move {
        let outcome = request.await;
        // The connection may be gone; then the reply has nowhere to go.
        let _ = done.send((tag, outcome));
        drop(guard);
    });
    None
}

/// Runs `handler` on one request and returns the frame to send, if any.
/// A panic, a missing reply to a `CALL` or a malformed reply frame becomes
/// an `INTERNAL_ERROR` exception, so the connection keeps working.
async fn run_request(handler: Arc<dyn Handler>, msg: Message) -> Option<Bytes> {
    // Kept for the error path only; short names need no allocation.
    let name = NameBuf::new(msg.name());
    let seqid = msg.seqid();
    let oneway = msg.kind() == MessageType::Oneway;
    // Through the trait object itself: `handler.handle` would pick the
    // `Arc<H>` impl and box a forwarding future on every request.
    let handler: &dyn Handler = &*handler;
    let result = AssertUnwindSafe(handler.handle(msg)).catch_unwind().await;
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
                let method = String::from_utf8_lossy(name.as_bytes());
                tracing::error!(%method, panic = %what, "oneway handler panicked");
                return None;
            }
            format!("handler panicked: {what}")
        }
    };
    let method = String::from_utf8_lossy(name.as_bytes());
    tracing::error!(%method, seqid, %error, "request failed");
    Some(
        application_exception(name.as_bytes(), seqid, ExceptionKind::InternalError, &error)
            .freeze(),
    )
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
    // Read in place: this runs for every reply, so no copy of the name.
    let payload = &frame[LEN_PREFIX..];
    let word = payload
        .get(..4)
        .map(|w| u32::from_be_bytes(w.try_into().unwrap()));
    let name_len = payload
        .get(4..8)
        .map(|n| i32::from_be_bytes(n.try_into().unwrap()));
    let (Some(word), Some(name_len)) = (word, name_len) else {
        return Err("the handler's reply has no readable message header".into());
    };
    if word & 0x8000_0000 == 0 {
        return Err("the handler's reply has no strict message header".into());
    }
    let at = usize::try_from(name_len).ok().map(|n| 8 + n);
    let Some(got) = at.and_then(|at| payload.get(at..at + 4)) else {
        return Err("the handler's reply has no readable message header".into());
    };
    let (kind, got) = (
        (word & 0xff) as u8,
        i32::from_be_bytes(got.try_into().unwrap()),
    );
    if (kind == MessageType::Reply as u8 || kind == MessageType::Exception as u8) && got == seqid {
        Ok(())
    } else {
        Err(format!(
            "the handler's reply has type {kind} and seqid {got} (expected a strict reply with seqid {seqid})"
        ))
    }
}

/// The exception sent for unreadable input before the connection closes.
pub(crate) fn protocol_error(header: Option<Header>, error: &str) -> Bytes {
    let (name, seqid) = header
        .map(|h| (h.bare_name().to_vec(), h.seqid))
        .unwrap_or_default();
    application_exception(&name, seqid, ExceptionKind::ProtocolError, error).freeze()
}
