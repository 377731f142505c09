//! `FrameCodec` and `FrameReader` over arbitrary byte streams cut into
//! arbitrary chunks. Both must agree with a plain reference splitter:
//! the same frames (prefix kept, never longer than the maximum), the
//! same error at the same place, and at the end of the stream either a
//! clean end or "closed inside a frame".
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use rpc_codec::{FrameCodec, FrameError, LEN_PREFIX};
use rpc_fuzz::{chunks, reference_frames, runtime, Cursor, Tail};
use rpc_transport::{FrameReader, Stream};
use tokio::io::AsyncWriteExt;
use tokio_util::codec::{Decoder, Encoder};

fn check_error(e: &FrameError, tail: &Tail, max_frame: usize) {
    match (e, tail) {
        (FrameError::Negative(n), Tail::Bad(len)) => assert!(*n < 0 && i64::from(*n) == *len),
        (FrameError::Empty, Tail::Bad(0)) => {}
        (FrameError::TooLarge { len, max }, Tail::Bad(l)) => {
            assert_eq!((i64::from(*len), *max), (*l, max_frame));
            assert!(*len as usize > max_frame);
        }
        (e, t) => panic!("error {e:?} where the reference ends with {t:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    // Small maxima so that oversized frames are easy to reach.
    let max_frame = 1 + usize::from(c.u16()) % 4096;
    let seed = c.u8();
    // Bytes already read by a predecessor (a handed-over connection).
    let handed = usize::from(c.u8());
    let stream = c.rest();
    let (want, tail) = reference_frames(stream, max_frame);

    // The codec, fed chunk by chunk.
    let mut codec = FrameCodec::new(max_frame);
    let mut buf = BytesMut::new();
    let mut got: Vec<BytesMut> = Vec::new();
    let mut failed = None;
    'feed: for chunk in chunks(stream, seed) {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(f)) => {
                    assert!(f.len() > LEN_PREFIX && f.len() <= LEN_PREFIX + max_frame);
                    got.push(f);
                }
                Ok(None) => break,
                Err(e) => {
                    failed = Some(e);
                    break 'feed;
                }
            }
        }
    }
    assert_eq!(got.len(), want.len(), "frames decoded");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(&g[..], *w);
        // Frames are written out as they were read.
        let mut out = BytesMut::new();
        codec.encode(Bytes::copy_from_slice(g), &mut out).unwrap();
        assert_eq!(&out[..], &g[..]);
    }
    match (&failed, &tail) {
        (None, Tail::Clean) => assert!(buf.is_empty()),
        (None, Tail::Partial(n)) => assert_eq!(buf.len(), *n),
        (Some(e), t) => check_error(e, t, max_frame),
        (None, t) => panic!("no error where the reference ends with {t:?}"),
    }

    // The reader on a socket: the first `handed` bytes as if handed over,
    // the rest written in chunks, then the writer closes.
    let split = handed.min(stream.len());
    let (pre, post) = stream.split_at(split);
    runtime().block_on(async {
        let (a, mut b) = tokio::net::UnixStream::pair().unwrap();
        let (r, _w) = Stream::Unix(a).into_split();
        let mut reader =
            FrameReader::new(r, FrameCodec::new(max_frame)).with_buffered(BytesMut::from(pre));
        let post = post.to_vec();
        let writer = tokio::spawn(async move {
            for chunk in chunks(&post, seed.wrapping_add(1)) {
                if b.write_all(chunk).await.is_err() {
                    return; // the reader stopped at an error
                }
                tokio::task::yield_now().await;
            }
            let _ = b.shutdown().await;
        });
        let mut n = 0;
        let end = loop {
            match reader.next().await {
                Some(Ok(f)) => {
                    assert!(n < want.len(), "more frames than the reference");
                    assert_eq!(&f[..], want[n]);
                    n += 1;
                }
                other => break other,
            }
        };
        assert_eq!(n, want.len(), "frames read");
        match (end, &tail) {
            (None, Tail::Clean) => {}
            (Some(Err(FrameError::Io(e))), Tail::Partial(_)) => {
                assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof)
            }
            (Some(Err(e)), t) => check_error(&e, t, max_frame),
            (end, t) => panic!("reader ended with {end:?} where the reference ends with {t:?}"),
        }
        drop(reader);
        writer.await.unwrap();
    });
});
