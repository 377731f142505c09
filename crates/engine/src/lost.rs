//! Why things fail, typed: a connection's end ([`Lost`]) and a request's
//! failure ([`Failure`]). The SPEC §3 wording of the exception a client
//! gets lives in one place ([`Failure::to_exception`]), and so do the
//! labels metrics count them by. Causes travel the request path as these
//! small values, not as formatted strings.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rpc_codec::{application_exception, ExceptionKind, Header};

/// Why a connection ended without either side asking for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lost {
    /// The peer closed the connection.
    Closed,
    /// Reading or writing the socket failed; the error's own text when it
    /// says more than its kind (a TLS alert: which certificate was refused).
    Io(io::ErrorKind, Option<Arc<str>>),
    /// The peer broke the protocol (the text says how).
    BadInput(Arc<str>),
    /// Nothing heard from the peer for this long: its heartbeat echoes
    /// stopped.
    Silent(Duration),
    /// The endpoint left the registry and its requests did not finish
    /// within the drain timeout.
    Removed,
    /// The peer asked to stop (`STOP`) and did not answer its requests
    /// within the drain timeout.
    StopTimedOut,
    /// This side is stopping.
    Stopping,
}

impl Lost {
    pub fn io(e: &io::Error) -> Lost {
        // Plain OS errors are told by their kind; errors that carry their
        // own text (TLS, codecs) keep it: it is the only hint of why.
        let detail = e.get_ref().map(|inner| inner.to_string().into());
        Lost::Io(e.kind(), detail)
    }

    pub fn bad_input(what: impl fmt::Display) -> Lost {
        Lost::BadInput(what.to_string().into())
    }

    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Lost::Closed => "closed",
            Lost::Io(..) => "io",
            Lost::BadInput(_) => "bad_input",
            Lost::Silent(_) => "silent",
            Lost::Removed => "removed",
            Lost::StopTimedOut => "stop_timed_out",
            Lost::Stopping => "stopping",
        }
    }
}

impl fmt::Display for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lost::Closed => f.write_str("the peer closed the connection"),
            Lost::Io(_, Some(detail)) => write!(f, "I/O error: {detail}"),
            Lost::Io(kind, None) => write!(f, "I/O error: {kind}"),
            Lost::BadInput(what) => write!(f, "bad input: {what}"),
            Lost::Silent(d) => write!(f, "no heartbeat echo for {:.1}s", d.as_secs_f64()),
            Lost::Removed => f.write_str("the endpoint left the registry"),
            Lost::StopTimedOut => {
                f.write_str("the endpoint asked to stop and left calls unanswered")
            }
            Lost::Stopping => f.write_str("stopping"),
        }
    }
}

/// Why a request is answered with an exception instead of a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No such service in the registry.
    UnknownService,
    /// The service has no endpoint that could take the request.
    NoEndpoint,
    /// No reply by the request's deadline.
    Timeout,
    /// The deadline passed while the request waited to be sent.
    TimeoutInQueue,
    /// No connection could take it: each was full or went down before
    /// writing it.
    NotSent,
    /// Sent, then the connection to `peer` was lost.
    Lost { peer: Arc<str>, cause: Lost },
    /// Refused before being sent (`why`: e.g. the queue is full).
    Rejected(&'static str),
    /// Still waiting when `who` (this side) stopped.
    Stopping(&'static str),
}

impl Failure {
    /// The `EXCEPTION` frame for the client, worded as the original's
    /// (clients match on these texts).
    pub fn to_exception(&self, service: &str, method: &[u8], seqid: i32) -> Bytes {
        let m = String::from_utf8_lossy(method);
        let (kind, text) = match self {
            Failure::UnknownService => (
                ExceptionKind::Unknown,
                format!("Service: {service} Not Found"),
            ),
            Failure::NoEndpoint => (
                ExceptionKind::InternalError,
                format!("Service: {service} has no live endpoint for method {m}"),
            ),
            Failure::Timeout | Failure::TimeoutInQueue => (
                ExceptionKind::InternalError,
                format!("Timeout Exception: {service}:{m} got no reply in time"),
            ),
            Failure::NotSent => (
                ExceptionKind::InternalError,
                format!("{service}:{m} failed: no endpoint could take the request"),
            ),
            Failure::Lost { peer, cause } => (
                ExceptionKind::InternalError,
                format!("{service}:{m} failed: connection to {peer} lost: {cause}"),
            ),
            Failure::Rejected(why) => (
                ExceptionKind::InternalError,
                format!("{service}:{m} rejected: {why}"),
            ),
            Failure::Stopping(who) => (
                ExceptionKind::InternalError,
                format!("{service}:{m} failed: {who} is stopping"),
            ),
        };
        application_exception(method, seqid, kind, &text).freeze()
    }

    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Failure::UnknownService => "unknown_service",
            Failure::NoEndpoint => "no_endpoint",
            Failure::Timeout => "timeout",
            Failure::TimeoutInQueue => "timeout_in_queue",
            Failure::NotSent => "not_sent",
            Failure::Lost { .. } => "lost",
            Failure::Rejected(_) => "rejected",
            Failure::Stopping(_) => "stopping",
        }
    }
}

/// The reply to unreadable input: a `PROTOCOL_ERROR` exception, named and
/// numbered after the offending message when its header could be read.
pub fn protocol_error(text: &str, header: Option<Header>) -> Bytes {
    let (name, seqid) = match &header {
        Some(h) => (h.bare_name(), h.seqid),
        None => (&b""[..], 0),
    };
    application_exception(name, seqid, ExceptionKind::ProtocolError, text).freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rpc_codec::{read_application_exception, Message};

    fn exception(b: Bytes) -> (i32, String, i32) {
        let msg = Message::parse(b.into()).unwrap();
        let x = read_application_exception(msg.body()).unwrap();
        (msg.seqid(), x.message, x.kind)
    }

    #[test]
    fn the_spec_wording_of_each_failure() {
        let cases = [
            (Failure::UnknownService, "Service: echo Not Found", 0),
            (
                Failure::NoEndpoint,
                "Service: echo has no live endpoint for method ping",
                6,
            ),
            (
                Failure::Timeout,
                "Timeout Exception: echo:ping got no reply in time",
                6,
            ),
            (
                Failure::Lost {
                    peer: "10.0.0.1:7000".into(),
                    cause: Lost::Silent(Duration::from_millis(6000)),
                },
                "echo:ping failed: connection to 10.0.0.1:7000 lost: no heartbeat echo for 6.0s",
                6,
            ),
            (
                Failure::Rejected("queue full"),
                "echo:ping rejected: queue full",
                6,
            ),
        ];
        for (failure, text, kind) in cases {
            let (seqid, message, got) = exception(failure.to_exception("echo", b"ping", 9));
            assert_eq!((seqid, message.as_str(), got), (9, text, kind));
        }
    }
    #[test]
    fn an_io_loss_keeps_the_text_of_errors_that_have_one() {
        let os = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(Lost::io(&os).to_string(), "I/O error: connection reset");
        let tls = io::Error::new(
            io::ErrorKind::InvalidData,
            "received fatal alert: UnknownCA",
        );
        assert_eq!(
            Lost::io(&tls).to_string(),
            "I/O error: received fatal alert: UnknownCA"
        );
        assert_eq!(Lost::io(&tls).label(), "io");
    }
}
