//! Just enough of the binary protocol's struct encoding to read a
//! `TApplicationException` (clients, tests and the load generator need its
//! message) while skipping any field it does not know.

use crate::ProtocolError;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ApplicationException {
    pub message: String,
    pub kind: i32,
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.b.len() < n {
            return Err(ProtocolError::BadStruct("truncated"));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.take(1)?[0])
    }
    fn i16(&mut self) -> Result<i16, ProtocolError> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn i32(&mut self) -> Result<i32, ProtocolError> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn len(&mut self) -> Result<usize, ProtocolError> {
        usize::try_from(self.i32()?).map_err(|_| ProtocolError::BadStruct("negative length"))
    }

    fn skip(&mut self, ttype: u8, depth: usize) -> Result<(), ProtocolError> {
        if depth > 64 {
            return Err(ProtocolError::BadStruct("nesting too deep"));
        }
        match ttype {
            2 | 3 => self.take(1).map(drop),  // bool, byte
            4 | 10 => self.take(8).map(drop), // double, i64
            6 => self.take(2).map(drop),      // i16
            8 => self.take(4).map(drop),      // i32
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
                for _ in 0..self.len()? {
                    self.skip(k, depth + 1)?;
                    self.skip(v, depth + 1)?;
                }
                Ok(())
            }
            14 | 15 => {
                let e = self.u8()?;
                for _ in 0..self.len()? {
                    self.skip(e, depth + 1)?;
                }
                Ok(())
            }
            _ => Err(ProtocolError::BadStruct("unknown field type")),
        }
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
