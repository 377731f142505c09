//! A hasher for the integer keys of per-connection tables (seqids).
//!
//! Keys are local (chosen by us, never by a peer), so SipHash's protection
//! against chosen keys buys nothing and costs a visible share of a request.
//! A multiplicative (Fibonacci) hash spreads sequential keys over all bits,
//! which the SwissTable behind `HashMap` needs.

use std::hash::{BuildHasherDefault, Hasher};

#[derive(Default, Clone, Copy)]
pub struct SeqIdHasher(u64);

impl Hasher for SeqIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_i32(&mut self, n: i32) {
        self.write_u64(n as u32 as u64);
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

pub type SeqIdHash = BuildHasherDefault<SeqIdHasher>;
