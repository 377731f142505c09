//! Just enough of the binary protocol's struct encoding to read a
//! `TApplicationException` (clients, tests and the load generator need its
//! message) while skipping any field it does not know.

use crate::ProtocolError;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ApplicationException {
    pub message: String,
    pub kind: i32,
}

/// A cursor over binary-protocol bytes that can skip any value.
pub(crate) struct Reader<'a> {
    pub(crate) b: &'a [u8],
}

/// Encoded size of a fixed-width type, `None` for the others.
fn fixed_width(ttype: u8) -> Option<usize> {
    match ttype {
        2 | 3 => Some(1),
        4 | 10 => Some(8),
        6 => Some(2),
        8 => Some(4),
        _ => None,
    }
}

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.b.len() < n {
            return Err(ProtocolError::BadStruct("truncated"));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn i16(&mut self) -> Result<i16, ProtocolError> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn i32(&mut self) -> Result<i32, ProtocolError> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }
    pub(crate) fn len(&mut self) -> Result<usize, ProtocolError> {
        usize::try_from(self.i32()?).map_err(|_| ProtocolError::BadStruct("negative length"))
    }

    /// Skips one value of type `ttype` (containers of fixed-width
    /// values in one step).
    pub(crate) fn skip(&mut self, ttype: u8, depth: usize) -> Result<(), ProtocolError> {
        if depth > 64 {
            return Err(ProtocolError::BadStruct("nesting too deep"));
        }
        if let Some(w) = fixed_width(ttype) {
            return self.take(w).map(drop);
        }
        match ttype {
            11 => {
                let n = self.len()?;
                self.take(n).map(drop)
            }
            12 => loop {
                let t = self.u8()?;
                if t == 0 {
                    return Ok(());
                }
                self.i16()?;
                self.skip(t, depth + 1)?;
            },
            13 => {
                let (k, v) = (self.u8()?, self.u8()?);
                let n = self.len()?;
                if let (Some(kw), Some(vw)) = (fixed_width(k), fixed_width(v)) {
                    return self.take_n(n, kw + vw);
                }
                for _ in 0..n {
                    self.skip(k, depth + 1)?;
                    self.skip(v, depth + 1)?;
                }
                Ok(())
            }
            14 | 15 => {
                let e = self.u8()?;
                let n = self.len()?;
                if let Some(w) = fixed_width(e) {
                    return self.take_n(n, w);
                }
                for _ in 0..n {
                    self.skip(e, depth + 1)?;
                }
                Ok(())
            }
            _ => Err(ProtocolError::BadStruct("unknown field type")),
        }
    }

    fn take_n(&mut self, n: usize, width: usize) -> Result<(), ProtocolError> {
        let bytes = n
            .checked_mul(width)
            .ok_or(ProtocolError::BadStruct("truncated"))?;
        self.take(bytes).map(drop)
    }
}

/// Reads a `TApplicationException` from an `EXCEPTION` message body.
pub fn read_application_exception(body: &[u8]) -> Result<ApplicationException, ProtocolError> {
    let mut r = Reader { b: body };
    let mut out = ApplicationException::default();
    loop {
        let t = r.u8()?;
        if t == 0 {
            return Ok(out);
        }
        let id = r.i16()?;
        match (id, t) {
            (1, 11) => {
                let n = r.len()?;
                out.message = String::from_utf8_lossy(r.take(n)?).into_owned();
            }
            (2, 8) => out.kind = r.i32()?,
            _ => r.skip(t, 0)?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_unknown_fields_and_rejects_truncation() {
        // field 3: list<i32> [1,2], then message, then type
        let mut b = vec![15, 0, 3, 8, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2];
        b.extend_from_slice(&[11, 0, 1, 0, 0, 0, 2, b'h', b'i', 8, 0, 2, 0, 0, 0, 7, 0]);
        let e = read_application_exception(&b).unwrap();
        assert_eq!((e.message.as_str(), e.kind), ("hi", 7));
        assert!(read_application_exception(&b[..b.len() - 1]).is_err());
    }
}
