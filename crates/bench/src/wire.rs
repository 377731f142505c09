//! The benchmark service's interface, as Thrift would encode it:
//!
//! ```thrift
//! service bench {
//!   binary echo(1: binary data)
//!   binary sleep(1: binary data, 2: i32 ms)   // answers data after ms
//!   void   fail(1: binary data)                // TApplicationException
//! }
//! ```
//!
//! Bodies are real binary-protocol structs, so a stock Thrift client or
//! server could take part. The load generator writes a per-request tag at
//! the start of `data`; the reply must carry it back, which catches replies
//! delivered to the wrong request even when their seqid was restored.

use bytes::{BufMut, BytesMut};
use rpc_codec::{MessageType, LEN_PREFIX};

pub const T_STOP: u8 = 0;
pub const T_I32: u8 = 8;
pub const T_STRING: u8 = 11;

/// The message of the exception `fail` answers with; any other exception
/// on a `fail` call is an error of the path, not the expected answer.
pub const FAIL_MESSAGE: &str = "bench: fail requested";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Echo,
    Sleep,
    Fail,
}

impl Method {
    pub fn name(self) -> &'static [u8] {
        match self {
            Method::Echo => b"echo",
            Method::Sleep => b"sleep",
            Method::Fail => b"fail",
        }
    }

    pub fn from_name(name: &[u8]) -> Option<Method> {
        match name {
            b"echo" => Some(Method::Echo),
            b"sleep" => Some(Method::Sleep),
            b"fail" => Some(Method::Fail),
            _ => None,
        }
    }
}

/// Header bytes of a strict message: version word, name, seqid.
fn put_header(b: &mut BytesMut, kind: MessageType, name: &[u8], seqid: i32) {
    b.put_u32(0x8001_0000 | kind as u32);
    b.put_u32(name.len() as u32);
    b.put_slice(name);
    b.put_i32(seqid);
}

/// Size of a call frame (prefix included) for these arguments.
pub fn call_frame_len(prefix: &[u8], method: Method, data_len: usize) -> usize {
    let name = prefix.len() + method.name().len();
    let args = 1 + 2 + 4 + data_len + if method == Method::Sleep { 7 } else { 0 } + 1;
    LEN_PREFIX + 4 + 4 + name + 4 + args
}

/// Appends one framed call to `out`: `prefix` (`service:` or empty) +
/// method, then `{1: data, 2: ms}` where `data` is `tag` followed by
/// `fill` (together `data_len` bytes; the tag is cut if `data_len < 8`).
#[allow(clippy::too_many_arguments)]
pub fn put_call(
    out: &mut BytesMut,
    prefix: &[u8],
    method: Method,
    seqid: i32,
    tag: u64,
    fill: &[u8],
    data_len: usize,
    sleep_ms: u32,
) {
    let total = call_frame_len(prefix, method, data_len);
    out.reserve(total);
    out.put_u32((total - LEN_PREFIX) as u32);
    out.put_u32(0x8001_0000 | MessageType::Call as u32);
    out.put_u32((prefix.len() + method.name().len()) as u32);
    out.put_slice(prefix);
    out.put_slice(method.name());
    out.put_i32(seqid);
    out.put_u8(T_STRING);
    out.put_i16(1);
    out.put_u32(data_len as u32);
    let tag = tag.to_be_bytes();
    let t = data_len.min(8);
    out.put_slice(&tag[..t]);
    out.put_slice(&fill[t..data_len]);
    if method == Method::Sleep {
        out.put_u8(T_I32);
        out.put_i16(2);
        out.put_u32(sleep_ms);
    }
    out.put_u8(T_STOP);
}

/// Whether `body` is the reply struct `{0: data}` with `data` = tag + fill.
pub fn reply_matches(body: &[u8], tag: u64, fill: &[u8], data_len: usize) -> bool {
    if body.len() != 1 + 2 + 4 + data_len + 1 || body[0] != T_STRING || body[1..3] != [0, 0] {
        return false;
    }
    if u32::from_be_bytes(body[3..7].try_into().unwrap()) as usize != data_len {
        return false;
    }
    let data = &body[7..7 + data_len];
    let t = data_len.min(8);
    data[..t] == tag.to_be_bytes()[..t] && data[t..] == fill[t..data_len] && body[7 + data_len] == 0
}

/// The arguments of a call as the service reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Args {
    /// Offset of `data` inside the body and its length.
    pub data: (usize, usize),
    pub ms: Option<u32>,
}

/// Reads `{1: binary data, 2: i32 ms}`; other fields are not expected.
pub fn read_args(body: &[u8]) -> Option<Args> {
    let mut at = 0;
    let mut data = None;
    let mut ms = None;
    loop {
        let t = *body.get(at)?;
        if t == T_STOP {
            break;
        }
        let id = i16::from_be_bytes(body.get(at + 1..at + 3)?.try_into().ok()?);
        at += 3;
        match (id, t) {
            (1, T_STRING) => {
                let n = i32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?);
                let n = usize::try_from(n).ok()?;
                body.get(at + 4..at + 4 + n)?;
                data = Some((at + 4, n));
                at += 4 + n;
            }
            (2, T_I32) => {
                let v = i32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?);
                ms = Some(u32::try_from(v).ok()?);
                at += 4;
            }
            // A string field the bench does not know (the trace context,
            // id 32767): skipped, as generated Thrift code does.
            (_, T_STRING) => {
                let n = i32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?);
                let n = usize::try_from(n).ok()?;
                body.get(at + 4..at + 4 + n)?;
                at += 4 + n;
            }
            _ => return None,
        }
    }
    Some(Args {
        data: data.unwrap_or((0, 0)),
        ms,
    })
}

/// Builds the reply `{0: data}` to a call, reusing the call's own buffer
/// when its layout allows (data is the first field): the type byte and the
/// field id are rewritten and the tail cut, so no byte of `data` moves.
/// `frame` must hold a parsed strict message whose name is already bare.
pub fn reply_in_place(mut frame: BytesMut, body_at: usize, args: Args) -> BytesMut {
    let (off, len) = args.data;
    if len > 0 && off == 7 {
        let end = body_at + off + len;
        frame.truncate(end);
        frame.put_u8(T_STOP);
        frame[body_at + 1..body_at + 3].copy_from_slice(&0i16.to_be_bytes());
        frame[7] = MessageType::Reply as u8;
        let n = (frame.len() - LEN_PREFIX) as u32;
        frame[..4].copy_from_slice(&n.to_be_bytes());
        return frame;
    }
    // Empty data or an unusual field order: encode afresh.
    let name_len = u32::from_be_bytes(frame[8..12].try_into().unwrap()) as usize;
    let name = frame[12..12 + name_len].to_vec();
    let seqid = i32::from_be_bytes(frame[12 + name_len..16 + name_len].try_into().unwrap());
    let data = frame[body_at + off..body_at + off + len].to_vec();
    let mut out = BytesMut::with_capacity(LEN_PREFIX + 16 + name.len() + len + 8);
    out.put_u32(0);
    put_header(&mut out, MessageType::Reply, &name, seqid);
    out.put_u8(T_STRING);
    out.put_i16(0);
    out.put_u32(len as u32);
    out.put_slice(&data);
    out.put_u8(T_STOP);
    let n = (out.len() - LEN_PREFIX) as u32;
    out[..4].copy_from_slice(&n.to_be_bytes());
    out
}

/// The fill pattern of request payloads: not all zero, so that a reply
/// assembled from the wrong bytes shows.
pub fn fill(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ 0x5a).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rpc_codec::Message;

    fn call(method: Method, data_len: usize, prefix: &[u8]) -> BytesMut {
        let f = fill(data_len);
        let mut b = BytesMut::new();
        put_call(
            &mut b,
            prefix,
            method,
            42,
            0x0102_0304_0506_0708,
            &f,
            data_len,
            7,
        );
        assert_eq!(b.len(), call_frame_len(prefix, method, data_len));
        b
    }

    #[test]
    fn calls_parse_and_replies_match() {
        for len in [0, 3, 8, 64, 1000] {
            for method in [Method::Echo, Method::Sleep] {
                let mut m = Message::parse(call(method, len, b"bench:")).unwrap();
                assert_eq!(m.name(), [b"bench:", method.name()].concat());
                m.strip_service();
                let args = read_args(m.body()).unwrap();
                assert_eq!(args.data.1, len);
                assert_eq!(args.ms, (method == Method::Sleep).then_some(7));
                let body_at = m.frame_len() - m.body().len();
                let reply = reply_in_place(m.into_inner(), body_at, args);
                let r = Message::parse(reply).unwrap();
                assert_eq!(r.kind(), MessageType::Reply);
                assert_eq!((r.name(), r.seqid()), (method.name(), 42));
                assert!(reply_matches(
                    r.body(),
                    0x0102_0304_0506_0708,
                    &fill(len),
                    len
                ));
                assert!(!reply_matches(r.body(), 9, &fill(len), len) || len == 0);
            }
        }
    }

    #[test]
    fn bad_args_are_rejected() {
        assert!(read_args(&[T_STRING, 0, 1, 0, 0, 0, 9, 1]).is_none());
        assert!(read_args(&[T_I32, 0, 7, 0, 0, 0, 1, 0]).is_none());
        assert!(read_args(&[]).is_none());
        assert_eq!(read_args(&[0]).unwrap().data, (0, 0));
    }

    #[test]
    fn unknown_string_fields_are_skipped() {
        // {1: "ab", 32767: "tp"} as the proxy's trace field adds it.
        let body = [
            T_STRING, 0, 1, 0, 0, 0, 2, b'a', b'b', T_STRING, 0x7f, 0xff, 0, 0, 0, 2, b't', b'p', 0,
        ];
        let args = read_args(&body).unwrap();
        assert_eq!(args.data, (7, 2));
        assert!(
            read_args(&body[..body.len() - 2]).is_none(),
            "a cut field is still an error"
        );
    }
}
