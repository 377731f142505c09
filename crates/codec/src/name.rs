/// A copy of a message name (or any short byte string) that needs no heap
/// allocation when it is short, which names almost always are. Proxies and
/// the LB keep one per request in flight, for routing again and for the
/// text of error replies after the message itself has been sent on.
#[derive(Debug, Clone)]
pub enum NameBuf {
    Inline {
        len: u8,
        bytes: [u8; NameBuf::INLINE],
    },
    Heap(Box<[u8]>),
}

impl NameBuf {
    const INLINE: usize = 46;

    pub fn new(name: &[u8]) -> NameBuf {
        if name.len() <= Self::INLINE {
            let mut bytes = [0; Self::INLINE];
            bytes[..name.len()].copy_from_slice(name);
            NameBuf::Inline {
                len: name.len() as u8,
                bytes,
            }
        } else {
            NameBuf::Heap(name.into())
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            NameBuf::Inline { len, bytes } => &bytes[..*len as usize],
            NameBuf::Heap(b) => b,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_stay_inline_and_long_ones_are_kept_whole() {
        let short = NameBuf::new(b"echo:echo");
        assert!(matches!(short, NameBuf::Inline { .. }));
        assert_eq!(short.as_bytes(), b"echo:echo");
        let long = vec![b'x'; 300];
        let n = NameBuf::new(&long);
        assert!(matches!(n, NameBuf::Heap(_)));
        assert_eq!(n.as_bytes(), &long[..]);
        assert_eq!(NameBuf::new(b"").as_bytes(), b"");
    }
}
