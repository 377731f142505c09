//! Trace context carried inside a call where stock Thrift does not look.
//!
//! A traced `CALL` or `ONEWAY` carries a W3C `traceparent` as one more
//! field of its argument struct: id [`TRACE_FIELD_ID`], type `STRING`,
//! placed right before the struct's closing STOP byte (the last byte of
//! the message). Generated Thrift code skips field ids it does not know,
//! so stock servers and workers decode the call as if the field were not
//! there; hops of this project read it with [`trace_field`] and set it
//! with [`with_trace_field`].
//!
//! Only a body that is exactly one well-formed struct is read or
//! rewritten: anything else is left as it came.

use std::ops::Range;

use bytes::BufMut;

use crate::tstruct::Reader;
use crate::{Message, MessageType};

/// The field id of the trace context: the highest a Thrift IDL can
/// declare, so it cannot collide with a real argument.
pub const TRACE_FIELD_ID: i16 = 32767;

const T_STOP: u8 = 0;
const T_STRING: u8 = 11;

/// Where the trace field sits in a body, if anywhere.
struct Scan {
    /// The whole field (type, id, length, value).
    field: Option<Range<usize>>,
    /// Its value.
    value: Option<Range<usize>>,
}

/// Walks the argument struct that is the whole of `body`, from the field
/// starting at `from` on, for the first trace field; `None` when it is not
/// exactly one struct.
fn scan(body: &[u8], from: usize) -> Option<Scan> {
    let mut r = Reader { b: &body[from..] };
    let at = |r: &Reader<'_>| body.len() - r.b.len();
    let mut out = Scan {
        field: None,
        value: None,
    };
    loop {
        let start = at(&r);
        let t = r.u8().ok()?;
        if t == T_STOP {
            return r.b.is_empty().then_some(out);
        }
        let id = r.i16().ok()?;
        if id == TRACE_FIELD_ID && t == T_STRING && out.field.is_none() {
            let n = r.len().ok()?;
            let value = at(&r);
            r.take(n).ok()?;
            out.value = Some(value..value + n);
            out.field = Some(start..at(&r));
        } else {
            r.skip(t, 0).ok()?;
        }
    }
}

fn carries_args(msg: &Message) -> bool {
    matches!(msg.kind(), MessageType::Call | MessageType::Oneway)
}

/// The `traceparent` a call carries in its argument struct, if any.
pub fn trace_field(msg: &Message) -> Option<&str> {
    if !carries_args(msg) {
        return None;
    }
    let body = msg.body();
    let value = scan(body, 0)?.value?;
    std::str::from_utf8(&body[value]).ok()
}

/// `msg` carrying `traceparent` as its trace field: any it had are
/// removed (all of them: one left behind would be read in place of the new
/// one), and the new one goes right before the closing STOP byte; the
/// frame length is rewritten. Messages other than calls, and calls whose
/// body is not one well-formed struct, come back unchanged.
pub fn with_trace_field(msg: Message, traceparent: &str) -> Message {
    if !carries_args(&msg) {
        return msg;
    }
    let Some(mut found) = scan(msg.body(), 0) else {
        return msg;
    };
    let base = msg.frame_len() - msg.body().len();
    let mut buf = msg.into_inner();
    while let Some(old) = found.field {
        // Close the gap: everything after the old field moves up.
        let (from, to) = (base + old.end, base + old.start);
        let len = buf.len();
        buf.copy_within(from..len, to);
        buf.truncate(len - old.len());
        // The fields before it held no trace field: go on from its place.
        match scan(&buf[base..], old.start) {
            Some(rest) => found = rest,
            None => break,
        }
    }
    // The closing STOP byte is written again after the new field.
    buf.truncate(buf.len() - 1);
    buf.reserve(1 + 2 + 4 + traceparent.len() + 1);
    buf.put_u8(T_STRING);
    buf.put_i16(TRACE_FIELD_ID);
    buf.put_i32(traceparent.len() as i32);
    buf.put_slice(traceparent.as_bytes());
    buf.put_u8(T_STOP);
    let frame = (buf.len() - crate::LEN_PREFIX) as u32;
    buf[..crate::LEN_PREFIX].copy_from_slice(&frame.to_be_bytes());
    Message::parse(buf).expect("the header is unchanged")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode_message;
    use proptest::prelude::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const TP2: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";

    fn call(body: &[u8]) -> Message {
        Message::parse(encode_message(MessageType::Call, b"echo", 7, body)).unwrap()
    }

    /// `1: string "hi"`, STOP.
    const ARGS: &[u8] = &[11, 0, 1, 0, 0, 0, 2, b'h', b'i', 0];

    fn field(tp: &str) -> Vec<u8> {
        let mut f = vec![T_STRING];
        f.extend_from_slice(&TRACE_FIELD_ID.to_be_bytes());
        f.extend_from_slice(&(tp.len() as i32).to_be_bytes());
        f.extend_from_slice(tp.as_bytes());
        f
    }

    #[test]
    fn adds_the_field_before_the_stop_byte_and_reads_it_back() {
        let m = with_trace_field(call(ARGS), TP);
        let mut want = ARGS[..ARGS.len() - 1].to_vec();
        want.extend_from_slice(&field(TP));
        want.push(0);
        assert_eq!(m.body(), &want[..]);
        assert_eq!((m.name(), m.seqid()), (&b"echo"[..], 7));
        assert_eq!(m.frame_len() - crate::LEN_PREFIX, {
            let p = &m.as_frame()[..4];
            u32::from_be_bytes(p.try_into().unwrap()) as usize
        });
        assert_eq!(trace_field(&m), Some(TP));
        assert_eq!(trace_field(&call(ARGS)), None);
    }

    #[test]
    fn a_second_trace_context_replaces_the_first() {
        let once = with_trace_field(call(ARGS), TP);
        let twice = with_trace_field(once, TP2);
        assert_eq!(trace_field(&twice), Some(TP2));
        assert_eq!(twice.body(), with_trace_field(call(ARGS), TP2).body());
        // A field a client put anywhere (here first) is replaced too.
        let mut body = field(TP);
        body.extend_from_slice(ARGS);
        let m = with_trace_field(call(&body), TP2);
        assert_eq!(m.body(), with_trace_field(call(ARGS), TP2).body());
    }

    #[test]
    fn every_trace_field_a_client_sent_is_replaced_by_ours() {
        // Two trace fields around a real argument: found by fuzzing (the
        // second one used to stay, and was read instead of ours).
        let mut body = field("forged-1");
        body.extend_from_slice(&ARGS[..ARGS.len() - 1]);
        body.extend_from_slice(&field("forged-2"));
        body.push(0);
        let m = with_trace_field(call(&body), TP);
        assert_eq!(trace_field(&m), Some(TP));
        assert_eq!(m.body(), with_trace_field(call(ARGS), TP).body());
    }

    #[test]
    fn empty_args_and_oneway_calls_carry_it_too() {
        let m = with_trace_field(call(&[0]), TP);
        assert_eq!(trace_field(&m), Some(TP));
        let ow = encode_message(MessageType::Oneway, b"note", 1, ARGS);
        let ow = with_trace_field(Message::parse(ow).unwrap(), TP);
        assert_eq!(trace_field(&ow), Some(TP));
    }

    #[test]
    fn other_messages_and_malformed_bodies_are_left_alone() {
        let reply = encode_message(MessageType::Reply, b"echo", 1, ARGS);
        let m = with_trace_field(Message::parse(reply.clone()).unwrap(), TP);
        assert_eq!(m.as_frame(), &reply[..]);
        for body in [
            &b""[..],
            &ARGS[..ARGS.len() - 1],     // no STOP
            &[11, 0, 1, 0, 0, 0, 9, 0],  // string past the end
            &[0, 0],                     // bytes after the STOP
            &[99, 0, 1, 0],              // unknown type
            &[11, 0x7f, 0xff, 255, 255], // negative length
        ] {
            let m = call(body);
            let before = m.as_frame().to_vec();
            assert_eq!(trace_field(&m), None);
            assert_eq!(with_trace_field(m, TP).as_frame(), &before[..]);
        }
        // The same id with another type is someone else's field.
        let mut other = vec![8, 0x7f, 0xff, 0, 0, 0, 1];
        other.extend_from_slice(ARGS);
        assert_eq!(trace_field(&call(&other)), None);
    }

    /// One field value of a random argument struct, encoded.
    fn value(depth: u32) -> BoxedStrategy<(u8, Vec<u8>)> {
        let leaf = prop_oneof![
            any::<bool>().prop_map(|b| (2u8, vec![b as u8])),
            any::<i16>().prop_map(|v| (6u8, v.to_be_bytes().to_vec())),
            any::<i32>().prop_map(|v| (8u8, v.to_be_bytes().to_vec())),
            any::<i64>().prop_map(|v| (10u8, v.to_be_bytes().to_vec())),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(|s| {
                let mut b = (s.len() as i32).to_be_bytes().to_vec();
                b.extend(s);
                (11u8, b)
            }),
            proptest::collection::vec(any::<i32>(), 0..10).prop_map(|l| {
                let mut b = vec![8];
                b.extend((l.len() as i32).to_be_bytes());
                l.iter().for_each(|v| b.extend(v.to_be_bytes()));
                (15u8, b)
            }),
        ];
        if depth == 0 {
            return leaf.boxed();
        }
        prop_oneof![
            3 => leaf,
            1 => args(depth - 1).prop_map(|s| (12u8, s)),
        ]
        .boxed()
    }

    /// A random struct (ids below the trace field's), STOP included.
    fn args(depth: u32) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec((1i16..1000, value(depth)), 0..6).prop_map(|fields| {
            let mut b = Vec::new();
            for (id, (t, v)) in fields {
                b.push(t);
                b.extend(id.to_be_bytes());
                b.extend(v);
            }
            b.push(0);
            b
        })
    }

    proptest! {
        #[test]
        fn any_struct_gains_exactly_one_trace_field_and_keeps_the_rest(
            body in args(2), tp in "00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]", tp2 in "[ -~]{0,80}",
            seqid: i32,
        ) {
            let m = Message::parse(encode_message(MessageType::Call, b"m", seqid, &body)).unwrap();
            prop_assert_eq!(trace_field(&m), None);
            let m = with_trace_field(m, &tp);
            prop_assert_eq!(trace_field(&m), Some(tp.as_str()));
            let mut want = body[..body.len() - 1].to_vec();
            want.extend(field(&tp));
            want.push(0);
            prop_assert_eq!(m.body(), &want[..]);
            prop_assert_eq!(m.seqid(), seqid);
            // Replacing keeps one field, the new one, in the same place.
            let m = with_trace_field(m, &tp2);
            prop_assert_eq!(trace_field(&m), Some(tp2.as_str()));
            let again = Message::parse(m.into_inner()).unwrap();
            let mut want = body[..body.len() - 1].to_vec();
            want.extend(field(&tp2));
            want.push(0);
            prop_assert_eq!(again.body(), &want[..]);
        }

        #[test]
        fn arbitrary_bodies_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            let m = call(&raw);
            let _ = trace_field(&m);
            let _ = with_trace_field(m, TP);
        }
    }
}
