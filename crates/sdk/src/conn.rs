//! Pieces shared by the service server and the worker: running a handler
//! safely, inline when it can be.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;
use rpc_codec::{application_exception, ExceptionKind, Message, MessageType, NameBuf, LEN_PREFIX};
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
    let (kind, got) = Message::peek_frame(frame)
        .map_err(|e| format!("the handler's reply is not a strict message: {e}"))?;
    if kind.is_response() && got == seqid {
        Ok(())
    } else {
        Err(format!(
            "the handler's reply has type {kind:?} and seqid {got} (expected a reply with seqid {seqid})"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rpc_codec::encode_message;

    fn frame(kind: MessageType, seqid: i32) -> Vec<u8> {
        encode_message(kind, b"echo", seqid, b"\x00").to_vec()
    }

    #[test]
    fn a_reply_must_be_a_whole_strict_response_with_the_request_seqid() {
        assert!(check_reply(&frame(MessageType::Reply, 7), 7).is_ok());
        assert!(check_reply(&frame(MessageType::Exception, 7), 7).is_ok());
        assert!(check_reply(&frame(MessageType::Reply, 8), 7).is_err());
        assert!(check_reply(&frame(MessageType::Call, 7), 7).is_err());
        assert!(check_reply(&[0, 0], 7).is_err());
        // The length prefix must match what follows.
        let mut long = frame(MessageType::Reply, 7);
        long.push(0);
        assert!(check_reply(&long, 7).is_err());
        // A header cut short, its prefix telling the truth.
        let mut cut = frame(MessageType::Reply, 7)[..10].to_vec();
        cut[..4].copy_from_slice(&6u32.to_be_bytes());
        assert!(check_reply(&cut, 7).is_err());
        // Non-strict (old-style) header: name length first.
        let mut old = vec![0, 0, 0, 13, 0, 0, 0, 4];
        old.extend_from_slice(b"echo");
        old.push(MessageType::Reply as u8);
        old.extend_from_slice(&7i32.to_be_bytes());
        assert!(check_reply(&old, 7).is_err());
    }
}
