//! The LB's span per call (with `otlp_endpoint` set): started when the
//! proxy's call arrives, under the trace context it carried (the proxy's
//! span), put in the call for the worker, ended when the answer goes back.
//!
//! A proxy connection keeps the recorded spans of its calls in flight by
//! the seqid they came with (unique among them, SPEC §4). Without tracing
//! the connection has no [`Spans`] and a call pays one branch.

use std::collections::HashMap;
use std::sync::Arc;

use rpc_codec::{trace_field, with_trace_field, Message};
use rpc_config::otel::{CallSpan, SpanEnd, Tracing};
use tokio::time::Instant;

use crate::metrics::Ending;

pub struct Spans {
    tracing: Arc<Tracing>,
    service: Arc<str>,
    inflight: HashMap<i32, CallSpan>,
}

impl Spans {
    pub fn new(tracing: Arc<Tracing>, service: Arc<str>) -> Spans {
        Spans {
            tracing,
            service,
            inflight: HashMap::new(),
        }
    }

    /// Starts the span of the call or oneway `msg` (method name already
    /// bare), which arrived at `at`, and puts its context in the call.
    pub fn start(&mut self, msg: Message, oneway: bool, at: Instant) -> Message {
        let span = self.tracing.start_call(trace_field(&msg), at);
        let msg = with_trace_field(msg, span.traceparent());
        if span.is_recording() {
            if oneway {
                // Nothing comes back: the span covers the hand-over.
                self.finish(span, msg.name(), msg.seqid(), Ending::Oneway, at);
            } else {
                // A seqid reused while in flight (not by a proxy) replaces
                // the earlier span, which the SDK then ends as dropped.
                self.inflight.insert(msg.seqid(), span);
            }
        }
        msg
    }

    /// Ends the span of the call `seqid` (`method`), which ended `e` at `at`.
    pub fn end(&mut self, seqid: i32, method: &[u8], e: Ending, at: Instant) {
        if let Some(span) = self.inflight.remove(&seqid) {
            self.finish(span, method, seqid, e, at);
        }
    }

    fn finish(&self, span: CallSpan, method: &[u8], seqid: i32, e: Ending, at: Instant) {
        let end = SpanEnd {
            service: self.service.as_bytes(),
            method,
            peer: None,
            outcome: e.label(),
            seqid,
            error: !matches!(e, Ending::Ok | Ending::Oneway),
        };
        span.end(&self.tracing, end, at);
    }
}
