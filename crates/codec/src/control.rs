use bytes::{BufMut, BytesMut};

use crate::frame::LEN_PREFIX;
use crate::MessageType;

/// `TApplicationException` types used by the proxy and the LB (SPEC §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum ExceptionKind {
    Unknown = 0,
    UnknownMethod = 1,
    InternalError = 6,
    ProtocolError = 7,
}

/// Encodes one framed strict-binary message.
pub fn encode_message(kind: MessageType, name: &[u8], seqid: i32, body: &[u8]) -> BytesMut {
    let payload = 4 + 4 + name.len() + 4 + body.len();
    let mut b = BytesMut::with_capacity(LEN_PREFIX + payload);
    b.put_u32(payload as u32);
    b.put_u32(0x8001_0000 | kind as u32);
    b.put_u32(name.len() as u32);
    b.put_slice(name);
    b.put_i32(seqid);
    b.put_slice(body);
    b
}

/// The heartbeat the proxy and the LB send downstream: `ping`, no body.
pub fn heartbeat(seqid: i32) -> BytesMut {
    encode_message(MessageType::Heartbeat, b"ping", seqid, b"")
}

/// The proxy's own answer to a client heartbeat: a `REPLY` named `ping`
/// with an empty result struct.
pub fn heartbeat_reply(seqid: i32) -> BytesMut {
    encode_message(MessageType::Reply, b"ping", seqid, &[0])
}

/// A worker's graceful-stop notice (any name is accepted by the LB).
pub fn stop() -> BytesMut {
    encode_message(MessageType::Stop, b"worker_stop", 0, b"")
}

/// The LB's acknowledgement of a worker's `STOP`.
pub fn stop_confirm() -> BytesMut {
    encode_message(MessageType::StopConfirm, b"stop_confirm", 0, b"")
}

/// An `EXCEPTION` message carrying a `TApplicationException`
/// (`1: string message, 2: i32 type`).
pub fn application_exception(
    name: &[u8],
    seqid: i32,
    kind: ExceptionKind,
    message: &str,
) -> BytesMut {
    let mut body = Vec::with_capacity(message.len() + 16);
    body.put_u8(11); // T_STRING
    body.put_i16(1);
    body.put_u32(message.len() as u32);
    body.put_slice(message.as_bytes());
    body.put_u8(8); // T_I32
    body.put_i16(2);
    body.put_i32(kind as i32);
    body.put_u8(0); // T_STOP
    encode_message(MessageType::Exception, name, seqid, &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{read_application_exception, Message};

    #[test]
    fn application_exception_round_trips() {
        let m = Message::parse(application_exception(
            b"ping",
            -7,
            ExceptionKind::InternalError,
            "no endpoint for echo:ping",
        ))
        .unwrap();
        assert_eq!(m.kind(), MessageType::Exception);
        assert_eq!(m.seqid(), -7);
        let e = read_application_exception(m.body()).unwrap();
        assert_eq!(e.message, "no endpoint for echo:ping");
        assert_eq!(e.kind, ExceptionKind::InternalError as i32);
    }

    #[test]
    fn control_messages_have_expected_shape() {
        let hb = Message::parse(heartbeat(3)).unwrap();
        assert_eq!(
            (hb.kind(), hb.name(), hb.body()),
            (MessageType::Heartbeat, &b"ping"[..], &b""[..])
        );
        let r = Message::parse(heartbeat_reply(9)).unwrap();
        assert_eq!(
            (r.kind(), r.seqid(), r.body()),
            (MessageType::Reply, 9, &[0u8][..])
        );
        assert_eq!(Message::parse(stop()).unwrap().kind(), MessageType::Stop);
        assert_eq!(
            Message::parse(stop_confirm()).unwrap().kind(),
            MessageType::StopConfirm
        );
    }
}
