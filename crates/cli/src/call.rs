//! `rpcctl call SERVICE METHOD --thrift FILE 'JSON'`: one Thrift call
//! through a proxy, typed by the IDL, as a stock client makes it (SPEC
//! §3): framed strict binary, the name `SERVICE:METHOD`. The answer is
//! printed as JSON: the result, the declared exception, or the
//! `TApplicationException` the proxy or the service sent.
//!
//! A oneway call has no answer; it is followed by a heartbeat, which the
//! proxy answers itself and in arrival order, so its echo means the proxy
//! has taken the call (or answered it with an error first).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures::{SinkExt, StreamExt};
use rpc_codec::{
    encode_message, heartbeat, read_application_exception, FrameCodec, Message, MessageType,
};
use rpc_transport::{Address, Stream};
use serde_json::{json, Value};
use tokio::time::{timeout_at, Instant};
use tokio_util::codec::Framed;

use crate::idl::{Function, Schema};
use crate::tjson::{self, Outcome};

/// Our call's seqid, and the one of the heartbeat after a oneway call.
const SEQID: i32 = 1;
const HEARTBEAT_SEQID: i32 = 2;

/// What to call.
pub struct Request {
    /// The service as the proxy routes it (the registry's name).
    pub service: String,
    pub method: String,
    pub thrift: PathBuf,
    /// The IDL service to take METHOD from, when the name alone does not
    /// tell.
    pub idl_service: Option<String>,
    /// A JSON object keyed by argument names.
    pub args: Value,
}

/// How the call ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Returned(Value),
    Raised {
        exception: String,
        field: String,
        value: Value,
    },
    /// A `TApplicationException` (from the proxy, the LB or the service).
    Failed {
        kind: i32,
        message: String,
    },
    /// A oneway call, taken by the proxy.
    Sent,
}

impl Answer {
    /// What is printed: the result itself, or the exception.
    pub fn to_json(&self) -> Option<Value> {
        match self {
            Answer::Returned(v) => Some(v.clone()),
            Answer::Raised {
                exception,
                field,
                value,
            } => Some(json!({"exception": exception, "field": field, "value": value})),
            Answer::Failed { kind, message } => Some(json!({
                "exception": "TApplicationException",
                "type": application_kind(*kind),
                "type_id": kind,
                "message": message,
            })),
            Answer::Sent => None,
        }
    }

    /// The error line for a call that did not return.
    pub fn error(&self, service: &str, method: &str) -> Option<String> {
        match self {
            Answer::Returned(_) | Answer::Sent => None,
            Answer::Raised {
                exception, value, ..
            } => {
                // Most exceptions carry a message; show it rather than JSON.
                let text = match value.get("message") {
                    Some(Value::String(m)) => m.clone(),
                    _ => value.to_string(),
                };
                Some(format!("{service}:{method} raised {exception}: {text}"))
            }
            Answer::Failed { kind, message } => Some(format!(
                "{service}:{method} failed: TApplicationException {}: {message}",
                application_kind(*kind)
            )),
        }
    }
}

/// The IDL function to call and its encoded arguments.
pub fn prepare(request: &Request) -> anyhow::Result<(Schema, Function, Vec<u8>)> {
    let schema = Schema::load(&request.thrift)?;
    let service = schema.pick_service(
        &request.service,
        &request.method,
        request.idl_service.as_deref(),
    )?;
    let function = service
        .function(&request.method)
        .ok_or_else(|| {
            let names: Vec<&str> = service.functions.iter().map(|f| f.name.as_str()).collect();
            anyhow!(
                "service {} has no method {} (it has: {})",
                service.name,
                request.method,
                names.join(", ")
            )
        })?
        .clone();
    let body = tjson::encode_args(&schema, &function, &request.args)?;
    Ok((schema, function, body))
}

/// Makes the call through the proxy at `proxy`, all of it (connecting
/// included) within `limit`.
pub async fn call(request: &Request, proxy: &Address, limit: Duration) -> anyhow::Result<Answer> {
    let (schema, function, body) = prepare(request)?;
    let deadline = Instant::now() + limit;
    let late = || {
        anyhow!(
            "no answer from the proxy at {proxy} within {} ms",
            limit.as_millis()
        )
    };
    let stream = timeout_at(deadline, Stream::connect(proxy))
        .await
        .map_err(|_| late())?
        .with_context(|| format!("cannot connect to the proxy at {proxy}"))?;
    let mut io = Framed::new(stream, FrameCodec::default());
    let name = format!("{}:{}", request.service, request.method);
    let kind = if function.oneway {
        MessageType::Oneway
    } else {
        MessageType::Call
    };
    let exchange = async {
        io.send(encode_message(kind, name.as_bytes(), SEQID, &body).freeze())
            .await
            .context("cannot send the call")?;
        if function.oneway {
            io.send(heartbeat(HEARTBEAT_SEQID).freeze())
                .await
                .context("cannot send the call")?;
        }
        let frame = match io.next().await {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => bail!("bad answer from the proxy: {e}"),
            None => bail!("the proxy closed the connection without answering"),
        };
        let message = Message::parse(frame).map_err(|e| anyhow!("bad answer: {e}"))?;
        if function.oneway && message.seqid() == HEARTBEAT_SEQID {
            return Ok(Answer::Sent);
        }
        interpret(&schema, &function, &message)
    };
    timeout_at(deadline, exchange).await.map_err(|_| late())?
}

/// What the answer `message` to a call of `function` says.
pub fn interpret(
    schema: &Schema,
    function: &Function,
    message: &Message,
) -> anyhow::Result<Answer> {
    if message.seqid() != SEQID {
        bail!(
            "the answer has seqid {}, not our call's {SEQID}",
            message.seqid()
        );
    }
    match message.kind() {
        MessageType::Exception => {
            let e = read_application_exception(message.body())
                .map_err(|e| anyhow!("unreadable TApplicationException: {e}"))?;
            Ok(Answer::Failed {
                kind: e.kind,
                message: e.message,
            })
        }
        MessageType::Reply => {
            if message.name() != function.name.as_bytes() {
                bail!(
                    "the reply is for {:?}, not {}",
                    String::from_utf8_lossy(message.name()),
                    function.name
                );
            }
            Ok(
                match tjson::decode_result(schema, function, message.body())? {
                    Outcome::Success(v) => Answer::Returned(v),
                    Outcome::Declared {
                        exception,
                        field,
                        value,
                    } => Answer::Raised {
                        exception,
                        field,
                        value,
                    },
                },
            )
        }
        other => bail!("the proxy answered a {other:?} message"),
    }
}

/// The arguments as given on the command line: JSON text, `-` for
/// standard input, or nothing (no arguments).
pub fn read_args(text: Option<&str>) -> anyhow::Result<Value> {
    let text = match text {
        None => return Ok(Value::Null),
        Some("-") => {
            std::io::read_to_string(std::io::stdin()).context("cannot read the arguments")?
        }
        Some(t) => t.to_string(),
    };
    serde_json::from_str(&text).context("the arguments are not JSON")
}

/// The standard `TApplicationException` type names.
fn application_kind(kind: i32) -> &'static str {
    match kind {
        0 => "UNKNOWN",
        1 => "UNKNOWN_METHOD",
        2 => "INVALID_MESSAGE_TYPE",
        3 => "WRONG_METHOD_NAME",
        4 => "BAD_SEQUENCE_ID",
        5 => "MISSING_RESULT",
        6 => "INTERNAL_ERROR",
        7 => "PROTOCOL_ERROR",
        8 => "INVALID_TRANSFORM",
        9 => "INVALID_PROTOCOL",
        10 => "UNSUPPORTED_CLIENT_TYPE",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use rpc_codec::{application_exception, ExceptionKind};

    use super::*;

    const IDL: &str = "exception Oops { 1: string message }\n\
                       service S { i32 f(1: i32 a) throws (1: Oops oops) }";

    fn parts() -> (Schema, Function) {
        let schema = Schema::parse(IDL).unwrap();
        let f = schema.services[0].function("f").unwrap().clone();
        (schema, f)
    }

    fn message(kind: MessageType, name: &str, seqid: i32, body: &[u8]) -> Message {
        Message::parse(encode_message(kind, name.as_bytes(), seqid, body)).unwrap()
    }

    #[test]
    fn replies_become_results_exceptions_or_failures() {
        let (schema, f) = parts();
        let ok = message(MessageType::Reply, "f", SEQID, &[8, 0, 0, 0, 0, 0, 7, 0]);
        let answer = interpret(&schema, &f, &ok).unwrap();
        assert_eq!(answer, Answer::Returned(json!(7)));
        assert_eq!(answer.error("s", "f"), None);

        let mut raised = vec![12, 0, 1, 11, 0, 1, 0, 0, 0, 2];
        raised.extend_from_slice(b"no");
        raised.extend_from_slice(&[0, 0]);
        let answer = interpret(
            &schema,
            &f,
            &message(MessageType::Reply, "f", SEQID, &raised),
        )
        .unwrap();
        assert_eq!(
            answer.to_json(),
            Some(json!({"exception": "Oops", "field": "oops", "value": {"message": "no"}}))
        );
        assert_eq!(answer.error("s", "f").unwrap(), "s:f raised Oops: no");

        let frame = application_exception(b"f", SEQID, ExceptionKind::InternalError, "down");
        let answer = interpret(&schema, &f, &Message::parse(frame).unwrap()).unwrap();
        assert_eq!(
            answer.to_json(),
            Some(
                json!({"exception": "TApplicationException", "type": "INTERNAL_ERROR", "type_id": 6, "message": "down"})
            )
        );
        assert_eq!(
            answer.error("s", "f").unwrap(),
            "s:f failed: TApplicationException INTERNAL_ERROR: down"
        );
    }

    #[test]
    fn answers_to_something_else_are_refused() {
        let (schema, f) = parts();
        let other_seqid = message(MessageType::Reply, "f", 9, &[0]);
        assert!(interpret(&schema, &f, &other_seqid).is_err());
        let other_name = message(MessageType::Reply, "g", SEQID, &[0]);
        assert!(interpret(&schema, &f, &other_name).is_err());
        let call = message(MessageType::Call, "f", SEQID, &[0]);
        assert!(interpret(&schema, &f, &call).is_err());
    }

    #[test]
    fn arguments_come_from_text_or_nothing() {
        assert_eq!(read_args(None).unwrap(), Value::Null);
        assert_eq!(read_args(Some(r#"{"a": 1}"#)).unwrap(), json!({"a": 1}));
        assert!(read_args(Some("{a: 1}")).is_err());
    }
}
