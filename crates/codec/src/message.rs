use bytes::{Buf, Bytes, BytesMut};

use crate::frame::LEN_PREFIX;
use crate::ProtocolError;

const VERSION_1: u32 = 0x8001_0000;
const VERSION_MASK: u32 = 0xffff_0000;
/// Frame prefix + version word + name length.
const NAME_OFFSET: usize = LEN_PREFIX + 8;

/// Message types of SPEC §2, including the project's three extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    Call = 1,
    Reply = 2,
    Exception = 3,
    Oneway = 4,
    Heartbeat = 20,
    Stop = 21,
    StopConfirm = 22,
}

impl MessageType {
    pub fn from_u8(v: u8) -> Result<Self, ProtocolError> {
        Ok(match v {
            1 => Self::Call,
            2 => Self::Reply,
            3 => Self::Exception,
            4 => Self::Oneway,
            20 => Self::Heartbeat,
            21 => Self::Stop,
            22 => Self::StopConfirm,
            other => return Err(ProtocolError::UnknownType(other)),
        })
    }

    pub fn is_response(self) -> bool {
        matches!(self, Self::Reply | Self::Exception)
    }
}

/// Name and seqid of a message, owned: what an error reply needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub kind: u8,
    pub name: Vec<u8>,
    pub seqid: i32,
}

impl Header {
    /// Best-effort read of a (strict or non-strict) header from a frame
    /// payload that may be incomplete or invalid, so that even a rejected
    /// message can be answered with its own name and seqid.
    pub fn peek(payload: &[u8]) -> Option<Header> {
        let word = u32::from_be_bytes(payload.get(..4)?.try_into().ok()?);
        if word & 0x8000_0000 != 0 {
            let n = i32::from_be_bytes(payload.get(4..8)?.try_into().ok()?);
            let n = usize::try_from(n).ok()?;
            let name = payload.get(8..8 + n)?.to_vec();
            let seqid = i32::from_be_bytes(payload.get(8 + n..12 + n)?.try_into().ok()?);
            Some(Header {
                kind: (word & 0xff) as u8,
                name,
                seqid,
            })
        } else {
            let n = word as usize;
            let name = payload.get(4..4 + n)?.to_vec();
            let kind = *payload.get(4 + n)?;
            let seqid = i32::from_be_bytes(payload.get(5 + n..9 + n)?.try_into().ok()?);
            Some(Header { kind, name, seqid })
        }
    }

    /// The method part of `service:method` (or the whole name).
    pub fn bare_name(&self) -> &[u8] {
        match self.name.iter().position(|&b| b == b':') {
            Some(p) => &self.name[p + 1..],
            None => &self.name,
        }
    }
}

/// One framed message: the frame buffer as read from the socket (length
/// prefix included) plus the parsed position of its header fields.
///
/// All rewrites happen inside the buffer; [`Message::into_bytes`] hands the
/// same memory to the writer.
#[derive(Debug)]
pub struct Message {
    buf: BytesMut,
    kind: MessageType,
    name_len: usize,
}

impl Message {
    /// Parses the strict binary header of a decoded frame (prefix included).
    pub fn parse(buf: BytesMut) -> Result<Self, ProtocolError> {
        let (kind, name_len) = Self::check(&buf)?;
        Ok(Self {
            buf,
            kind,
            name_len,
        })
    }

    /// The type and seqid of a whole frame (prefix included) with a valid
    /// strict header, read in place: the same checks as [`Message::parse`]
    /// without taking the buffer.
    pub fn peek_frame(frame: &[u8]) -> Result<(MessageType, i32), ProtocolError> {
        let (kind, name_len) = Self::check(frame)?;
        let o = NAME_OFFSET + name_len;
        Ok((
            kind,
            i32::from_be_bytes(frame[o..o + 4].try_into().unwrap()),
        ))
    }

    fn check(buf: &[u8]) -> Result<(MessageType, usize), ProtocolError> {
        let have = buf.len();
        if have < NAME_OFFSET {
            return Err(ProtocolError::Truncated(have.saturating_sub(LEN_PREFIX)));
        }
        let word = u32::from_be_bytes(buf[4..8].try_into().unwrap());
        if word & 0x8000_0000 == 0 {
            return Err(ProtocolError::NonStrictHeader);
        }
        if word & VERSION_MASK != VERSION_1 {
            return Err(ProtocolError::BadVersion(word));
        }
        let kind = MessageType::from_u8((word & 0xff) as u8)?;
        let n = i32::from_be_bytes(buf[8..12].try_into().unwrap());
        let name_len = usize::try_from(n).map_err(|_| ProtocolError::BadNameLength(n))?;
        if NAME_OFFSET + name_len + 4 > have {
            if NAME_OFFSET + name_len > have {
                return Err(ProtocolError::BadNameLength(n));
            }
            return Err(ProtocolError::Truncated(have - LEN_PREFIX));
        }
        Ok((kind, name_len))
    }

    /// Like [`Message::parse`], but a rejected frame still yields what
    /// could be read of its header, so the error reply can carry the
    /// offender's name and seqid.
    pub fn parse_or_peek(buf: BytesMut) -> Result<Self, (ProtocolError, Option<Header>)> {
        let peek = |buf: &BytesMut| buf.get(LEN_PREFIX..).and_then(Header::peek);
        match Self::check(&buf) {
            Ok((kind, name_len)) => Ok(Self {
                buf,
                kind,
                name_len,
            }),
            Err(e) => Err((e, peek(&buf))),
        }
    }

    pub fn kind(&self) -> MessageType {
        self.kind
    }

    pub fn name(&self) -> &[u8] {
        &self.buf[NAME_OFFSET..NAME_OFFSET + self.name_len]
    }

    fn seqid_offset(&self) -> usize {
        NAME_OFFSET + self.name_len
    }

    pub fn seqid(&self) -> i32 {
        let o = self.seqid_offset();
        i32::from_be_bytes(self.buf[o..o + 4].try_into().unwrap())
    }

    /// Rewrites the seqid in place.
    pub fn set_seqid(&mut self, seqid: i32) {
        let o = self.seqid_offset();
        self.buf[o..o + 4].copy_from_slice(&seqid.to_be_bytes());
    }

    /// The struct that follows the header.
    pub fn body(&self) -> &[u8] {
        &self.buf[self.seqid_offset() + 4..]
    }

    /// The whole frame, length prefix included.
    pub fn as_frame(&self) -> &[u8] {
        &self.buf
    }

    /// Length of the frame on the wire, prefix included.
    pub fn frame_len(&self) -> usize {
        self.buf.len()
    }

    /// The service of a `service:method` name: the text before the first `:`.
    pub fn service(&self) -> Option<&[u8]> {
        let name = self.name();
        name.iter().position(|&b| b == b':').map(|p| &name[..p])
    }

    /// The method part of the name (everything after the first `:`).
    pub fn method(&self) -> &[u8] {
        let name = self.name();
        match name.iter().position(|&b| b == b':') {
            Some(p) => &name[p + 1..],
            None => name,
        }
    }

    /// Removes the `service:` prefix from the name, in place.
    ///
    /// The method bytes already sit right before the seqid, so the frame
    /// simply starts `prefix` bytes later: the buffer is advanced and the
    /// 12 bytes in front of the method (length, version, name length) are
    /// written anew. Nothing after the name moves.
    pub fn strip_service(&mut self) {
        let Some(p) = self.name().iter().position(|&b| b == b':') else {
            return;
        };
        let cut = p + 1;
        let word = u32::from_be_bytes(self.buf[4..8].try_into().unwrap());
        let frame_len = (self.buf.len() - LEN_PREFIX - cut) as u32;
        let name_len = (self.name_len - cut) as u32;
        self.buf.advance(cut);
        self.buf[0..4].copy_from_slice(&frame_len.to_be_bytes());
        self.buf[4..8].copy_from_slice(&word.to_be_bytes());
        self.buf[8..12].copy_from_slice(&name_len.to_be_bytes());
        self.name_len -= cut;
    }

    /// Owned copy of the header, for error replies built later.
    pub fn header(&self) -> Header {
        Header {
            kind: self.kind as u8,
            name: self.name().to_vec(),
            seqid: self.seqid(),
        }
    }

    pub fn into_bytes(self) -> Bytes {
        self.buf.freeze()
    }

    pub fn into_inner(self) -> BytesMut {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode_message;
    use proptest::prelude::*;

    fn msg(kind: MessageType, name: &str, seqid: i32, body: &[u8]) -> Message {
        Message::parse(encode_message(kind, name.as_bytes(), seqid, body)).unwrap()
    }

    #[test]
    fn parses_strict_header() {
        let m = msg(MessageType::Call, "echo:ping", 7, b"\x00");
        assert_eq!(m.kind(), MessageType::Call);
        assert_eq!(m.name(), b"echo:ping");
        assert_eq!(m.service(), Some(&b"echo"[..]));
        assert_eq!(m.method(), b"ping");
        assert_eq!(m.seqid(), 7);
        assert_eq!(m.body(), b"\x00");
    }

    #[test]
    fn strip_keeps_everything_after_the_first_colon() {
        let mut m = msg(MessageType::Call, "a:b:c", -1, b"xyz");
        m.strip_service();
        let again = Message::parse(m.into_inner()).unwrap();
        assert_eq!(again.name(), b"b:c");
        assert_eq!(again.seqid(), -1);
        assert_eq!(again.body(), b"xyz");
    }

    #[test]
    fn name_without_colon_has_no_service() {
        let mut m = msg(MessageType::Call, "ping", 1, b"\x00");
        assert_eq!(m.service(), None);
        m.strip_service();
        assert_eq!(m.name(), b"ping");
    }

    #[test]
    fn rejects_non_strict_bad_version_unknown_type_and_truncation() {
        // non-strict: name length first
        let mut raw = BytesMut::new();
        raw.extend_from_slice(&13i32.to_be_bytes());
        raw.extend_from_slice(&4i32.to_be_bytes());
        raw.extend_from_slice(b"ping");
        raw.extend_from_slice(&[1]);
        raw.extend_from_slice(&9i32.to_be_bytes());
        assert_eq!(
            Message::parse(raw.clone()).unwrap_err(),
            ProtocolError::NonStrictHeader
        );
        let h = Header::peek(&raw[4..]).unwrap();
        assert_eq!((h.name.as_slice(), h.kind, h.seqid), (&b"ping"[..], 1, 9));

        let mut bad = encode_message(MessageType::Call, b"x", 1, b"");
        bad[5] = 0x02; // version 0x8002
        assert!(matches!(
            Message::parse(bad),
            Err(ProtocolError::BadVersion(_))
        ));

        let mut unk = encode_message(MessageType::Call, b"x", 1, b"");
        unk[7] = 9;
        assert_eq!(
            Message::parse(unk).unwrap_err(),
            ProtocolError::UnknownType(9)
        );

        let full = encode_message(MessageType::Call, b"svc:m", 1, b"");
        for cut in LEN_PREFIX..full.len() {
            let mut part = BytesMut::from(&full[..cut]);
            part[0..4].copy_from_slice(&((cut - LEN_PREFIX) as u32).to_be_bytes());
            assert!(Message::parse(part).is_err(), "cut at {cut}");
        }

        let mut neg = encode_message(MessageType::Call, b"abc", 1, b"");
        neg[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert_eq!(
            Message::parse(neg).unwrap_err(),
            ProtocolError::BadNameLength(-5)
        );
    }

    fn any_type() -> impl Strategy<Value = MessageType> {
        prop_oneof![
            Just(MessageType::Call),
            Just(MessageType::Reply),
            Just(MessageType::Exception),
            Just(MessageType::Oneway),
            Just(MessageType::Heartbeat),
        ]
    }

    proptest! {
        #[test]
        fn encode_parse_round_trip(kind in any_type(), name in "[a-z_:]{0,40}", seqid: i32,
                                   body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let m = msg(kind, &name, seqid, &body);
            prop_assert_eq!(m.kind(), kind);
            prop_assert_eq!(m.name(), name.as_bytes());
            prop_assert_eq!(m.seqid(), seqid);
            prop_assert_eq!(m.body(), &body[..]);
        }

        #[test]
        fn strip_and_seqid_rewrite_equal_fresh_encoding(service in "[a-z]{1,10}", method in "[a-z:]{0,20}",
                                                       seqid: i32, new_seqid: i32,
                                                       body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut m = msg(MessageType::Call, &format!("{service}:{method}"), seqid, &body);
            m.strip_service();
            m.set_seqid(new_seqid);
            let expect = encode_message(MessageType::Call, method.as_bytes(), new_seqid, &body);
            prop_assert_eq!(m.as_frame(), &expect[..]);
        }

        #[test]
        fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut framed = BytesMut::new();
            framed.extend_from_slice(&(raw.len() as u32).to_be_bytes());
            framed.extend_from_slice(&raw);
            let _ = Header::peek(&raw);
            if let Ok(m) = Message::parse(framed) {
                let _ = (m.name(), m.seqid(), m.body(), m.service());
            }
        }
    }
}
