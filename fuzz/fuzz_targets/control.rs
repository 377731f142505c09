//! Control messages and the bits of message bodies the hops read or
//! write: `TApplicationException` (read from arbitrary bodies; written by
//! every error reply), heartbeats and stop messages, and the trace field
//! (`trace_field`, `with_trace_field`) on arbitrary call bodies.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use rpc_codec::{
    application_exception, encode_message, heartbeat, heartbeat_reply, read_application_exception,
    stop, stop_confirm, trace_field, with_trace_field, ExceptionKind, Header, Message, MessageType,
    TRACE_FIELD_ID,
};
use rpc_engine::lost::protocol_error;
use rpc_engine::{Failure, Lost};
use rpc_fuzz::Cursor;

const KINDS: [ExceptionKind; 4] = [
    ExceptionKind::Unknown,
    ExceptionKind::UnknownMethod,
    ExceptionKind::InternalError,
    ExceptionKind::ProtocolError,
];

/// Parses `frame` as an exception: (name, seqid, message, type).
fn exception(frame: &[u8]) -> (Vec<u8>, i32, String, i32) {
    let m = Message::parse(frame.into()).expect("an exception frame parses");
    assert_eq!(m.kind(), MessageType::Exception);
    let prefix = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
    assert_eq!(prefix, frame.len() - 4);
    let e = read_application_exception(m.body()).expect("its body reads");
    (m.name().to_vec(), m.seqid(), e.message, e.kind)
}

fn read_exception(body: &[u8]) {
    let Ok(e) = read_application_exception(body) else {
        return;
    };
    // What was read, written again our way, reads the same.
    let mut again = vec![11, 0, 1];
    again.extend_from_slice(&(e.message.len() as u32).to_be_bytes());
    again.extend_from_slice(e.message.as_bytes());
    again.extend_from_slice(&[8, 0, 2]);
    again.extend_from_slice(&e.kind.to_be_bytes());
    again.push(0);
    assert_eq!(read_application_exception(&again).unwrap(), e);
    // Reading ends at the struct's STOP byte: what follows is not read.
    let mut longer = body.to_vec();
    longer.extend_from_slice(&[11, 0, 1, 0xff]);
    assert_eq!(read_application_exception(&longer).unwrap(), e);
}

fn write_exceptions(c: &mut Cursor<'_>) {
    let seqid = c.i32();
    let kind = KINDS[usize::from(c.u8()) % KINDS.len()];
    let n = usize::from(c.u8());
    let name = c.take(n);
    let n = usize::from(c.u8());
    let service = String::from_utf8_lossy(c.take(n)).into_owned();
    let text = String::from_utf8_lossy(c.rest()).into_owned();

    let got = exception(&application_exception(name, seqid, kind, &text));
    assert_eq!(got, (name.to_vec(), seqid, text.clone(), kind as i32));

    // The reply to bad input: named after the offender when its header
    // could be read.
    let header = Header::peek(name);
    let got = exception(&protocol_error(&text, header.clone()));
    let (want_name, want_seqid) = match &header {
        Some(h) => (h.bare_name().to_vec(), h.seqid),
        None => (Vec::new(), 0),
    };
    assert_eq!(got, (want_name, want_seqid, text.clone(), 7));

    // Every failure a client can get: the bare method, its own seqid.
    let failures = [
        Failure::UnknownService,
        Failure::NoEndpoint,
        Failure::Timeout,
        Failure::TimeoutInQueue,
        Failure::NotSent,
        Failure::Lost {
            peer: Arc::from(text.as_str()),
            cause: Lost::bad_input(&text),
        },
        Failure::Rejected("queue full"),
        Failure::Stopping("proxy"),
    ];
    for f in failures {
        let (n, s, message, k) = exception(&f.to_exception(&service, name, seqid));
        assert_eq!((&n[..], s), (name, seqid), "{f:?}");
        let want = match f {
            Failure::UnknownService => ExceptionKind::Unknown,
            _ => ExceptionKind::InternalError,
        };
        assert_eq!(k, want as i32);
        assert!(message.contains(&service), "{message:?} names {service:?}");
    }

    // Heartbeats and stop messages: their SPEC §4/§5 shapes.
    let hb = Message::parse(heartbeat(seqid)).unwrap();
    assert_eq!(
        (hb.kind(), hb.name(), hb.seqid(), hb.body()),
        (MessageType::Heartbeat, &b"ping"[..], seqid, &b""[..])
    );
    let r = Message::parse(heartbeat_reply(seqid)).unwrap();
    assert_eq!(
        (r.kind(), r.name(), r.seqid(), r.body()),
        (MessageType::Reply, &b"ping"[..], seqid, &[0u8][..])
    );
    let s = Message::parse(stop()).unwrap();
    assert_eq!(
        (s.kind(), s.seqid(), s.body()),
        (MessageType::Stop, 0, &b""[..])
    );
    let s = Message::parse(stop_confirm()).unwrap();
    assert_eq!(
        (s.kind(), s.name(), s.seqid(), s.body()),
        (MessageType::StopConfirm, &b"stop_confirm"[..], 0, &b""[..])
    );
}

fn trace(c: &mut Cursor<'_>, pick: u8) {
    let kind = match pick % 3 {
        0 => MessageType::Call,
        1 => MessageType::Oneway,
        _ => MessageType::Reply,
    };
    let seqid = c.i32();
    let n = usize::from(c.u8());
    let tp = String::from_utf8_lossy(c.take(n)).into_owned();
    let n = usize::from(c.u8());
    let tp2 = String::from_utf8_lossy(c.take(n)).into_owned();
    let body = c.rest();
    let frame = encode_message(kind, b"svc:m", seqid, body);
    let m = Message::parse(frame.clone()).unwrap();
    let before = trace_field(&m).map(str::to_owned);
    let out = with_trace_field(m, &tp);
    let changed = out.as_frame() != &frame[..];
    // The header never changes, and the length prefix stays right.
    assert_eq!(
        (out.kind(), out.name(), out.seqid()),
        (kind, &b"svc:m"[..], seqid)
    );
    let prefix = u32::from_be_bytes(out.as_frame()[..4].try_into().unwrap()) as usize;
    assert_eq!(prefix, out.frame_len() - 4);
    if kind == MessageType::Reply {
        assert!(
            !changed && before.is_none(),
            "only calls carry a trace field"
        );
        return;
    }
    if before.is_some() || changed {
        // A body that is one struct: it now carries `tp`, last.
        assert_eq!(trace_field(&out), Some(tp.as_str()));
        let b = out.body();
        let mut tail = vec![11];
        tail.extend_from_slice(&TRACE_FIELD_ID.to_be_bytes());
        tail.extend_from_slice(&(tp.len() as u32).to_be_bytes());
        tail.extend_from_slice(tp.as_bytes());
        tail.push(0);
        assert!(b.ends_with(&tail));
        // Replacing it: the same as setting `tp2` on the original.
        let once = with_trace_field(Message::parse(frame.clone()).unwrap(), &tp2);
        let twice = with_trace_field(out, &tp2);
        assert_eq!(once.as_frame(), twice.as_frame());
        assert_eq!(trace_field(&twice), Some(tp2.as_str()));
    } else {
        // Not one struct (or a trace value that is not text, left as it
        // came): untouched.
        assert!(!changed);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let op = c.u8();
    match op % 4 {
        0 => read_exception(c.rest()),
        1 => write_exceptions(&mut c),
        _ => trace(&mut c, op / 4),
    }
});
