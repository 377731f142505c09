//! The benchmark service's methods, `echo`, `sleep` and `fail` (see
//! [`crate::wire`]), as an [`rpc_sdk::Handler`]: `rpc-bench-server` serves
//! them with the Rust SDK (a [`rpc_sdk::Service`] or [`rpc_sdk::Worker`]s),
//! so benchmarks measure what a service built on the SDK gets.

use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use rpc_codec::{application_exception, ExceptionKind, Message, MessageType};

use crate::wire::{self, Method, FAIL_MESSAGE};

/// Serves the benchmark methods. An `echo` (with no `delay`) is answered
/// in the call's own buffer and at the first poll, so it costs no task.
#[derive(Debug, Clone)]
pub struct BenchHandler {
    /// `sleep` duration when the call does not carry one.
    pub default_sleep: Duration,
    /// Added to every call (e.g. to make one endpoint slow).
    pub delay: Duration,
}

impl Default for BenchHandler {
    fn default() -> Self {
        BenchHandler {
            default_sleep: Duration::from_millis(50),
            delay: Duration::ZERO,
        }
    }
}

#[async_trait]
impl rpc_sdk::Handler for BenchHandler {
    async fn handle(&self, request: Message) -> Option<Bytes> {
        let (wait, reply) = self.answer(request)?;
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Some(reply.freeze())
    }
}

impl BenchHandler {
    /// The reply to a call (none for a oneway) and how long to wait before
    /// sending it. The name carries no `service:` prefix any more.
    fn answer(&self, msg: Message) -> Option<(Duration, BytesMut)> {
        let oneway = msg.kind() == MessageType::Oneway;
        let seqid = msg.seqid();
        let Some(method) = Method::from_name(msg.name()) else {
            let text = format!("unknown method {:?}", String::from_utf8_lossy(msg.name()));
            let e = application_exception(msg.name(), seqid, ExceptionKind::UnknownMethod, &text);
            return (!oneway).then_some((Duration::ZERO, e));
        };
        let Some(args) = wire::read_args(msg.body()) else {
            let e = application_exception(
                msg.name(),
                seqid,
                ExceptionKind::ProtocolError,
                "bad arguments",
            );
            return (!oneway).then_some((Duration::ZERO, e));
        };
        if oneway {
            return None;
        }
        let wait = self.delay
            + match method {
                Method::Sleep => args
                    .ms
                    .map(|ms| Duration::from_millis(ms.into()))
                    .unwrap_or(self.default_sleep),
                _ => Duration::ZERO,
            };
        let reply = match method {
            Method::Fail => {
                application_exception(b"fail", seqid, ExceptionKind::Unknown, FAIL_MESSAGE)
            }
            Method::Echo | Method::Sleep => {
                let body_at = msg.frame_len() - msg.body().len();
                wire::reply_in_place(msg.into_inner(), body_at, args)
            }
        };
        Some((wait, reply))
    }
}
