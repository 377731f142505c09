//! `Message::parse` (and `parse_or_peek`, `peek_frame`, `Header::peek`)
//! on arbitrary frames, and the in-place rewrites on every frame that
//! parses: a seqid rewrite and the `service:` strip must give exactly the
//! frame a fresh encoding of the result would, and parse again to the
//! same message. Anything else must be an error, never a panic.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rpc_codec::{encode_message, Header, Message, NameBuf, LEN_PREFIX};
use rpc_fuzz::Cursor;

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let mode = c.u8();
    let new_seqid = c.i32();
    let payload = c.rest();
    // Mostly a well-formed length prefix; sometimes the input's own bytes
    // (the prefix is not the parser's business, but must not upset it).
    let frame = if mode & 1 == 0 {
        let mut f = BytesMut::with_capacity(LEN_PREFIX + payload.len());
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f
    } else {
        BytesMut::from(payload)
    };
    let raw = frame.to_vec();
    let peeked = raw.get(LEN_PREFIX..).and_then(Header::peek);

    let parsed = Message::parse(frame.clone());
    let peek_frame = Message::peek_frame(&raw);
    let either = Message::parse_or_peek(frame);
    let msg = match parsed {
        Err(e) => {
            assert_eq!(peek_frame.unwrap_err(), e);
            let (e2, h) = either.unwrap_err();
            assert_eq!(e2, e);
            assert_eq!(h, peeked);
            return;
        }
        Ok(m) => m,
    };
    let m2 = either.expect("parse_or_peek accepts what parse accepts");
    assert_eq!(peek_frame.unwrap(), (msg.kind(), msg.seqid()));
    assert_eq!(
        (m2.kind(), m2.seqid(), m2.name()),
        (msg.kind(), msg.seqid(), msg.name())
    );

    // The parts cover the frame exactly.
    let name = msg.name().to_vec();
    let body = msg.body().to_vec();
    let seqid = msg.seqid();
    assert_eq!(msg.frame_len(), raw.len());
    assert_eq!(LEN_PREFIX + 8 + name.len() + 4 + body.len(), raw.len());
    assert_eq!(&raw[LEN_PREFIX + 8..LEN_PREFIX + 8 + name.len()], &name[..]);
    assert_eq!(msg.as_frame(), &raw[..]);
    // The best-effort reader agrees with the strict one.
    let h = msg.header();
    assert_eq!(peeked.as_ref(), Some(&h));
    assert_eq!(h.bare_name(), msg.method());
    assert_eq!(
        (h.kind, &h.name[..], h.seqid),
        (msg.kind() as u8, &name[..], seqid)
    );
    assert_eq!(NameBuf::new(&name).as_bytes(), &name[..]);
    match msg.service() {
        Some(s) => {
            assert!(!s.contains(&b':'));
            assert_eq!([s, b":", msg.method()].concat(), name);
        }
        None => {
            assert!(!name.contains(&b':'));
            assert_eq!(msg.method(), &name[..]);
        }
    }

    // Seqid rewrite: only those four bytes change.
    let version = raw[4..8].to_vec();
    let mut m = msg;
    m.set_seqid(new_seqid);
    assert_eq!(m.seqid(), new_seqid);
    let mut want = raw.clone();
    let at = LEN_PREFIX + 8 + name.len();
    want[at..at + 4].copy_from_slice(&new_seqid.to_be_bytes());
    assert_eq!(m.as_frame(), &want[..]);

    // Strip: the frame a fresh encoding of the bare method would be (the
    // version word, whose middle byte is free, kept as it came).
    // A name without a service is left alone, prefix and all.
    let method = m.method().to_vec();
    let kind = m.kind();
    let had_service = m.service().is_some();
    m.strip_service();
    assert_eq!(m.name(), &method[..]);
    if had_service {
        let mut fresh = encode_message(kind, &method, new_seqid, &body);
        fresh[4..8].copy_from_slice(&version);
        assert_eq!(m.as_frame(), &fresh[..]);
    } else {
        assert_eq!(m.as_frame(), &want[..]);
    }
    // And it parses again to the same message.
    let again = Message::parse(m.into_inner()).expect("a stripped frame parses");
    assert_eq!(
        (again.kind(), again.name(), again.seqid(), again.body()),
        (kind, &method[..], new_seqid, &body[..])
    );
});
