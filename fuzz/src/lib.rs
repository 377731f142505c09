//! Helpers shared by the fuzz targets: a reference frame splitter, byte
//! cursors, and one runtime per process.

use std::sync::OnceLock;

/// How the stream ends according to the reference splitter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    /// Every byte went into a frame.
    Clean,
    /// Bytes of an unfinished frame (or length) remain.
    Partial(usize),
    /// A length that is negative, zero or above the maximum.
    Bad(i64),
}

/// SPEC §2 framing, written plainly and independently of `rpc_codec`:
/// the frames (prefix included) and how the stream ends.
pub fn reference_frames(stream: &[u8], max_frame: usize) -> (Vec<&[u8]>, Tail) {
    let mut frames = Vec::new();
    let mut at = 0;
    loop {
        let rest = &stream[at..];
        if rest.is_empty() {
            return (frames, Tail::Clean);
        }
        if rest.len() < 4 {
            return (frames, Tail::Partial(rest.len()));
        }
        let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as i64;
        if len <= 0 || len as u64 > max_frame as u64 {
            return (frames, Tail::Bad(len));
        }
        let total = 4 + len as usize;
        if rest.len() < total {
            return (frames, Tail::Partial(rest.len()));
        }
        frames.push(&rest[..total]);
        at += total;
    }
}

/// Reads small numbers off the front of a fuzz input.
pub struct Cursor<'a> {
    pub data: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Cursor { data }
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    pub fn i32(&mut self) -> i32 {
        i32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// Up to `n` bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (h, t) = self.data.split_at(n);
        self.data = t;
        h
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// Cuts `stream` into chunks whose sizes come from `seed` (a small
/// xorshift), so that frames and length prefixes are split anywhere.
pub fn chunks(stream: &[u8], seed: u8) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut x = u32::from(seed) | 0x100;
    let mut rest = stream;
    while !rest.is_empty() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        // Mostly small pieces, now and then a large one.
        let n = match x % 8 {
            0 => rest.len(),
            1..=3 => 1 + (x >> 8) as usize % 4,
            _ => 1 + (x >> 8) as usize % 64,
        };
        let (h, t) = rest.split_at(n.min(rest.len()));
        out.push(h);
        rest = t;
    }
    out
}

/// A current-thread runtime kept for the life of the fuzzing process:
/// everything the targets spawn runs only inside their `block_on`.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}
