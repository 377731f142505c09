//! What a server runs for each request: the [`Handler`] trait and its two
//! ready-made forms, plain async functions and Thrift-generated processors.

use std::future::Future;
use std::io::Cursor;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use rpc_codec::{
    application_exception, encode_message, ExceptionKind, Message, MessageType, NameBuf,
};
use thrift::protocol::{TBinaryInputProtocol, TBinaryOutputProtocol};
use thrift::server::TProcessor;

/// Serves one request.
///
/// `request` is a `CALL` or `ONEWAY` whose name carries no `service:`
/// prefix. The answer is the whole reply frame (length prefix included)
/// with the request's seqid, or `None` for a oneway call. A panic is caught
/// by the server and answered with an `INTERNAL_ERROR` exception.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn handle(&self, request: Message) -> Option<Bytes>;
}

#[async_trait]
impl<H: Handler + ?Sized> Handler for Arc<H> {
    async fn handle(&self, request: Message) -> Option<Bytes> {
        (**self).handle(request).await
    }
}

/// An error a plain handler function returns; it is sent as a
/// `TApplicationException`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    pub kind: ExceptionKind,
    pub message: String,
}

impl HandlerError {
    pub fn internal(message: impl Into<String>) -> Self {
        HandlerError {
            kind: ExceptionKind::InternalError,
            message: message.into(),
        }
    }

    pub fn unknown_method(method: &str) -> Self {
        HandlerError {
            kind: ExceptionKind::UnknownMethod,
            message: format!("unknown method {method}"),
        }
    }
}

impl From<String> for HandlerError {
    fn from(message: String) -> Self {
        HandlerError::internal(message)
    }
}

impl From<&str> for HandlerError {
    fn from(message: &str) -> Self {
        HandlerError::internal(message)
    }
}

/// A [`Handler`] made of an async function `(method, body) -> reply body`;
/// see [`handler_fn`].
pub struct FnHandler<F> {
    f: F,
}

/// Wraps `f(method, body)` as a handler. `body` is the argument struct as
/// bytes; `Ok(reply)` is sent as a `REPLY` carrying `reply` as the result
/// struct, `Err(e)` as an `EXCEPTION`. For oneway calls the result is
/// dropped.
pub fn handler_fn<F, Fut, E>(f: F) -> FnHandler<F>
where
    F: Fn(String, Bytes) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, E>> + Send + 'static,
    E: Into<HandlerError> + Send + 'static,
{
    FnHandler { f }
}

#[async_trait]
impl<F, Fut, E> Handler for FnHandler<F>
where
    F: Fn(String, Bytes) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, E>> + Send + 'static,
    E: Into<HandlerError> + Send + 'static,
{
    async fn handle(&self, request: Message) -> Option<Bytes> {
        let name = NameBuf::new(request.name());
        let seqid = request.seqid();
        let oneway = request.kind() == MessageType::Oneway;
        let method = String::from_utf8_lossy(name.as_bytes()).into_owned();
        // The body is a view of the frame as read: no copy.
        let body_at = request.frame_len() - request.body().len();
        let body = request.into_bytes().split_off(body_at);
        let result = (self.f)(method, body).await;
        if oneway {
            if let Err(e) = result {
                tracing::warn!(error = %e.into().message, "oneway handler failed");
            }
            return None;
        }
        let name = name.as_bytes();
        Some(match result {
            Ok(reply) => encode_message(MessageType::Reply, name, seqid, &reply).freeze(),
            Err(e) => {
                let e = e.into();
                application_exception(name, seqid, e.kind, &e.message).freeze()
            }
        })
    }
}

/// Runs a Thrift-generated processor (`thrift --gen rs`, e.g.
/// `EchoSyncProcessor::new(handler)`) as a [`Handler`].
///
/// Each request runs `process()` on the blocking pool over in-memory
/// transports: the input is the frame without its length prefix, the
/// output a buffer whose length prefix is filled in afterwards.
pub struct ThriftProcessor<P> {
    processor: Arc<P>,
}

impl<P> ThriftProcessor<P>
where
    P: TProcessor + Send + Sync + 'static,
{
    pub fn new(processor: P) -> Self {
        ThriftProcessor {
            processor: Arc::new(processor),
        }
    }
}

#[async_trait]
impl<P> Handler for ThriftProcessor<P>
where
    P: TProcessor + Send + Sync + 'static,
{
    async fn handle(&self, request: Message) -> Option<Bytes> {
        let name = request.name().to_vec();
        let seqid = request.seqid();
        let oneway = request.kind() == MessageType::Oneway;
        let processor = self.processor.clone();
        let frame = request.into_bytes();
        let ran = tokio::task::spawn_blocking(move || {
            let mut input =
                TBinaryInputProtocol::new(Cursor::new(&frame[rpc_codec::LEN_PREFIX..]), true);
            let mut out = vec![0u8; rpc_codec::LEN_PREFIX];
            let result = {
                let mut output = TBinaryOutputProtocol::new(&mut out, true);
                processor.process(&mut input, &mut output)
            };
            (result, out)
        })
        .await;
        let fail = |msg: String| {
            (!oneway).then(|| {
                application_exception(&name, seqid, ExceptionKind::InternalError, &msg).freeze()
            })
        };
        match ran {
            Ok((result, mut out)) => {
                if let Err(e) = &result {
                    tracing::warn!(error = %e, method = %String::from_utf8_lossy(&name), "thrift processor failed");
                }
                let payload = out.len() - rpc_codec::LEN_PREFIX;
                if oneway {
                    return None;
                }
                if payload == 0 {
                    // The processor gave up before writing anything.
                    let why = match result {
                        Err(e) => e.to_string(),
                        Ok(()) => "the processor wrote no reply".into(),
                    };
                    return fail(why);
                }
                out[..rpc_codec::LEN_PREFIX].copy_from_slice(&(payload as u32).to_be_bytes());
                Some(Bytes::from(out))
            }
            Err(e) => fail(format!("handler panicked: {e}")),
        }
    }
}
