use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::FrameError;

/// Size of the big-endian length that precedes every frame.
pub const LEN_PREFIX: usize = 4;

/// The original's maximum frame length (SPEC §2).
pub const DEFAULT_MAX_FRAME: usize = 16_384_000;

/// Cuts a byte stream into frames.
///
/// Decoded items keep their 4-byte length prefix so that a forwarded frame
/// is written back out as one contiguous buffer, with no re-encoding.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max_frame: usize,
}

impl FrameCodec {
    pub fn new(max_frame: usize) -> Self {
        Self { max_frame }
    }

    pub fn max_frame(&self) -> usize {
        self.max_frame
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

/// Bytes of a frame that must have arrived before the rest of it is
/// reserved.
const RESERVE_AFTER: usize = 4096;

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        if src.len() < LEN_PREFIX {
            return Ok(None);
        }
        let len = i32::from_be_bytes([src[0], src[1], src[2], src[3]]);
        if len < 0 {
            return Err(FrameError::Negative(len));
        }
        if len == 0 {
            return Err(FrameError::Empty);
        }
        let len = len as usize;
        if len > self.max_frame {
            return Err(FrameError::TooLarge {
                len: len as u32,
                max: self.max_frame,
            });
        }
        let total = LEN_PREFIX + len;
        if src.len() < total {
            // Reserve the whole frame once its body is arriving, so a large
            // body lands in one buffer without intermediate reallocation
            // copies; not on a bare header (a peer announcing max_frame
            // bytes and sending nothing more gets nothing reserved).
            if src.len() >= RESERVE_AFTER {
                src.reserve(total - src.len());
            }
            return Ok(None);
        }
        Ok(Some(src.split_to(total)))
    }
}

/// Frames handed to the encoder already carry their length prefix.
impl Encoder<Bytes> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        dst.extend_from_slice(item.chunk());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payload: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.extend_from_slice(&(payload.len() as i32).to_be_bytes());
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn decodes_frames_one_at_a_time_keeping_prefix() {
        let mut codec = FrameCodec::default();
        let mut buf = framed(b"abc");
        buf.extend_from_slice(&framed(b"de"));
        assert_eq!(
            &codec.decode(&mut buf).unwrap().unwrap()[..],
            &framed(b"abc")[..]
        );
        assert_eq!(
            &codec.decode(&mut buf).unwrap().unwrap()[..],
            &framed(b"de")[..]
        );
        assert!(codec.decode(&mut buf).unwrap().is_none());
    }

    #[test]
    fn incomplete_frame_is_not_an_error() {
        let mut codec = FrameCodec::default();
        let full = framed(b"hello");
        for cut in 0..full.len() {
            let mut buf = BytesMut::from(&full[..cut]);
            assert!(codec.decode(&mut buf).unwrap().is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn rejects_oversized_negative_and_empty_lengths() {
        let mut codec = FrameCodec::new(10);
        let mut buf = BytesMut::from(&11i32.to_be_bytes()[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::TooLarge { len: 11, max: 10 })
        ));
        let mut buf = BytesMut::from(&(-1i32).to_be_bytes()[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::Negative(-1))
        ));
        let mut buf = BytesMut::from(&0i32.to_be_bytes()[..]);
        assert!(matches!(codec.decode(&mut buf), Err(FrameError::Empty)));
    }
}
