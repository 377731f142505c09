//! The proxy's span per call (with `otlp_endpoint` set): started when the
//! call arrives, under the trace context it carried; the context of this
//! span goes on to the endpoint in the call's trace field
//! (`rpc_codec::with_trace_field`); ended when the call is answered.
//!
//! Client connections hold an `Option<Arc<Tracing>>`: without tracing no
//! slot gets a span and a call pays one branch. Calls not sampled carry
//! the context on (so the next hops follow the decision) but keep no span.

use std::sync::Arc;

use rpc_codec::{trace_field, with_trace_field, Message};
use rpc_config::otel::{CallSpan, SpanEnd, Tracing};
use tokio::time::Instant;

use crate::backend::Backend;
use crate::metrics::CallEnd;

/// A recorded call's span and the endpoint it was sent to last.
pub struct Traced {
    span: CallSpan,
    peer: Option<Arc<Backend>>,
}

/// Starts the span of the call `msg`, which arrived at `at`, and puts its
/// context in the call; the span only if it is recorded.
pub fn start(tracing: &Tracing, msg: Message, at: Instant) -> (Option<Box<Traced>>, Message) {
    let span = tracing.start_call(trace_field(&msg), at);
    let msg = with_trace_field(msg, span.traceparent());
    let traced = span
        .is_recording()
        .then(|| Box::new(Traced { span, peer: None }));
    (traced, msg)
}

impl Traced {
    /// The call went to `backend` (the last of its tries is kept).
    pub fn sent_to(&mut self, backend: &Arc<Backend>) {
        self.peer = Some(backend.clone());
    }

    /// Ends the span of the call `name` (`service:method`) from the
    /// client's `seqid`, answered at `at`.
    pub fn end(
        self: Box<Self>,
        tracing: &Tracing,
        name: &[u8],
        seqid: i32,
        end: Outcome,
        at: Instant,
    ) {
        let peer = self.peer.as_ref().map(|b| b.address.to_string());
        let (service, method) = match name.iter().position(|&b| b == b':') {
            Some(p) => (&name[..p], &name[p + 1..]),
            None => (&b""[..], name),
        };
        let end = SpanEnd {
            service,
            method,
            peer: peer.as_deref(),
            outcome: end.label(),
            seqid,
            error: !matches!(end, Outcome::Call(CallEnd::Ok | CallEnd::Oneway)),
        };
        self.span.end(tracing, end, at);
    }
}

/// How a traced call ended: as counted per method, or refused before any
/// of that (a service the registry does not know).
#[derive(Clone, Copy)]
pub enum Outcome {
    Call(CallEnd),
    UnknownService,
}

impl Outcome {
    /// The span's `outcome`: the `outcome` label of the per-method
    /// counters, or `unknown_service`.
    fn label(self) -> &'static str {
        match self {
            Outcome::UnknownService => "unknown_service",
            Outcome::Call(end) => match end {
                CallEnd::Ok => "ok",
                CallEnd::Exception => "exception",
                CallEnd::Timeout => "timeout",
                CallEnd::NoEndpoint => "no_endpoint",
                CallEnd::Lost => "lost",
                CallEnd::NotSent => "not_sent",
                CallEnd::Failed => "failed",
                CallEnd::Oneway => "oneway",
            },
        }
    }
}
