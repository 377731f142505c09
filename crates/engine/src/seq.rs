//! Seqids a hop assigns on its own connection.
//!
//! A hop that forwards requests (the proxy to an endpoint, the LB to a
//! worker) numbers them itself, so requests from many clients can share
//! one connection; the reply's seqid finds the request again. This table
//! is where both rewrites happen: [`SeqTable::assign`] gives a request
//! this hop's seqid, [`SeqTable::restore`] gives its reply the seqid the
//! request came with, and the entry back.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use rpc_codec::Message;

/// Requests in flight on one connection, by the seqid this hop gave them,
/// with the seqid each came with.
pub struct SeqTable<V> {
    map: HashMap<i32, (i32, V), SeqHash>,
    next: i32,
}

impl<V> Default for SeqTable<V> {
    fn default() -> Self {
        SeqTable {
            map: HashMap::default(),
            next: 0,
        }
    }
}

impl<V> SeqTable<V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rewrites `msg`'s seqid to the next free one (counting up,
    /// wrapping, never one still in flight), keeping `v` and the seqid it
    /// had; returns the new seqid.
    pub fn assign(&mut self, msg: &mut Message, v: V) -> i32 {
        let seqid = self.insert(msg.seqid(), v);
        msg.set_seqid(seqid);
        seqid
    }

    fn insert(&mut self, original: i32, v: V) -> i32 {
        loop {
            self.next = self.next.wrapping_add(1);
            if !self.map.contains_key(&self.next) {
                break;
            }
        }
        self.map.insert(self.next, (original, v));
        self.next
    }

    /// A reply to one of ours: gives it back the seqid its request came
    /// with and returns the entry. `None` (message untouched) for a seqid
    /// not in flight.
    pub fn restore(&mut self, msg: &mut Message) -> Option<V> {
        let (original, v) = self.map.remove(&msg.seqid())?;
        msg.set_seqid(original);
        Some(v)
    }

    /// The entry of a seqid in flight.
    pub fn get(&self, seqid: i32) -> Option<&V> {
        self.map.get(&seqid).map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, seqid: i32) -> Option<&mut V> {
        self.map.get_mut(&seqid).map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every entry, the table left empty (the connection failed).
    pub fn drain(&mut self) -> impl Iterator<Item = V> + '_ {
        self.map.drain().map(|(_, (_, v))| v)
    }
}

/// Hashes seqids. Keys are chosen by us, never by a peer, so SipHash's
/// protection against chosen keys buys nothing and costs a visible share
/// of a request; a multiplicative (Fibonacci) hash spreads sequential keys
/// over all bits, which the SwissTable behind `HashMap` needs.
#[derive(Default, Clone, Copy)]
pub struct SeqHasher(u64);

impl Hasher for SeqHasher {
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

pub type SeqHash = BuildHasherDefault<SeqHasher>;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rpc_codec::{encode_message, MessageType};

    fn call(seqid: i32) -> Message {
        Message::parse(encode_message(MessageType::Call, b"m", seqid, b"\x00")).unwrap()
    }

    #[test]
    fn assign_rewrites_and_restore_gives_the_seqid_back() {
        let mut t = SeqTable::new();
        let mut m = call(77);
        assert_eq!(t.assign(&mut m, 'a'), 1);
        assert_eq!(m.seqid(), 1);
        let mut other = call(5);
        assert_eq!(t.restore(&mut other), None);
        assert_eq!(other.seqid(), 5);
        assert_eq!(t.restore(&mut m), Some('a'));
        assert_eq!(m.seqid(), 77);
        assert_eq!(t.restore(&mut call(1)), None);
    }

    #[test]
    fn seqids_count_up_and_skip_those_in_flight_when_they_wrap() {
        let mut t = SeqTable::new();
        assert_eq!(t.insert(0, 'a'), 1);
        assert_eq!(t.insert(0, 'b'), 2);
        t.next = i32::MAX - 1;
        assert_eq!(t.insert(0, 'c'), i32::MAX);
        assert_eq!(t.insert(0, 'd'), i32::MIN);
        t.next = 0;
        // 1 and 2 are still in flight.
        assert_eq!(t.insert(0, 'e'), 3);
        assert_eq!(t.len(), 5);
        let mut all: Vec<_> = t.drain().collect();
        all.sort();
        assert_eq!(all, ['a', 'b', 'c', 'd', 'e']);
        assert!(t.is_empty());
    }

    proptest! {
        #[test]
        fn every_seqid_in_flight_is_unique_and_finds_its_entry(ops in proptest::collection::vec(0u8..4, 1..400)) {
            let mut t = SeqTable::new();
            let mut live: Vec<(Message, usize)> = Vec::new();
            for (i, op) in ops.into_iter().enumerate() {
                if op == 0 && !live.is_empty() {
                    let (mut m, v) = live.swap_remove(i % live.len());
                    prop_assert_eq!(t.restore(&mut m), Some(v));
                    prop_assert_eq!(m.seqid(), v as i32);
                } else {
                    let mut m = call(i as i32);
                    let seq = t.assign(&mut m, i);
                    prop_assert!(live.iter().all(|(l, _)| l.seqid() != seq));
                    live.push((m, i));
                }
                prop_assert_eq!(t.len(), live.len());
            }
        }
    }
}
