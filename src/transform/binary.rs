//! Reading and writing the Avro binary encoding: zig-zag varints and length-prefixed bytes.
//!
//! The reader never trusts a length: every count is checked against what is left of the
//! input before it is used, so corrupt data gives an error, never a panic or a huge allocation.

use super::ErrorKind;

/// A position in one event's bytes.
pub struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    /// A cursor over the same bytes at an earlier position.
    pub fn rewound(&self, pos: usize) -> Self {
        Cursor { buf: self.buf, pos }
    }

    /// Moves to `pos` (at most the end).
    pub fn skip_to(&mut self, pos: usize) {
        self.pos = pos.min(self.buf.len());
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The bytes between `start` and the current position.
    pub fn since(&self, start: usize) -> &'a [u8] {
        &self.buf[start..self.pos]
    }

    /// A zig-zag varint long (at most 10 bytes). Bits of the tenth byte beyond the 64th are
    /// dropped, as apache-avro and Java's Avro decoder drop them: the copied bytes then mean
    /// the same number to every reader.
    #[inline]
    pub fn long(&mut self) -> Result<i64, ErrorKind> {
        let mut value: u64 = 0;
        for shift in (0..70).step_by(7) {
            let byte = *self.buf.get(self.pos).ok_or(ErrorKind::Truncated)?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
            }
        }
        Err(ErrorKind::BadVarint)
    }

    /// A length (non-negative long) that fits in what is left.
    // Reads a length prefix; it is not the cursor's own length, so no `is_empty` goes with it.
    #[allow(clippy::len_without_is_empty)]
    #[inline]
    pub fn len(&mut self) -> Result<usize, ErrorKind> {
        let len = self.long()?;
        if len < 0 {
            return Err(ErrorKind::NegativeLength);
        }
        let len = len as u64;
        if len > self.remaining() as u64 {
            return Err(ErrorKind::Truncated);
        }
        Ok(len as usize)
    }

    /// Length-prefixed bytes (string or bytes).
    #[inline]
    pub fn bytes(&mut self) -> Result<&'a [u8], ErrorKind> {
        let len = self.len()?;
        self.take(len)
    }

    #[inline]
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], ErrorKind> {
        let end = self.pos.checked_add(n).ok_or(ErrorKind::Truncated)?;
        let slice = self.buf.get(self.pos..end).ok_or(ErrorKind::Truncated)?;
        self.pos = end;
        Ok(slice)
    }

    /// The item count of the next array or map block, and its byte size when the writer
    /// gave one (negative count form; the caller checks it against the items it reads, see
    /// [`Cursor::end_block`]). 0 ends the array. Counts larger than the bytes left are
    /// refused: every item we accept takes at least one byte.
    #[inline]
    pub fn block(&mut self) -> Result<(usize, Option<i64>), ErrorKind> {
        let count = self.long()?;
        let (count, size) = if count < 0 {
            let count = count.checked_neg().ok_or(ErrorKind::BadVarint)?;
            (count, Some(self.long()?))
        } else {
            (count, None)
        };
        if count as u64 > self.remaining() as u64 {
            return Err(ErrorKind::Truncated);
        }
        Ok((count as usize, size))
    }
}

impl Cursor<'_> {
    /// Checks a block's declared byte size against the bytes its items took (from `start`).
    /// A wrong size is refused: readers that skip arrays by their block sizes (Java's, for
    /// one) would misread the rest of a record that carried it.
    #[inline]
    pub fn end_block(&self, start: usize, size: Option<i64>) -> Result<(), ErrorKind> {
        match size {
            Some(size) if size != (self.pos() - start) as i64 => Err(ErrorKind::BlockSize),
            _ => Ok(()),
        }
    }
}

/// Appends a zig-zag varint.
#[inline]
pub fn write_long(out: &mut Vec<u8>, value: i64) {
    let mut n = ((value << 1) ^ (value >> 63)) as u64;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Appends length-prefixed bytes.
#[inline]
pub fn write_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_long(out, bytes.len() as i64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        for v in [0i64, 1, -1, 63, -64, 64, 300, -300, i64::MAX, i64::MIN] {
            let mut out = Vec::new();
            write_long(&mut out, v);
            let mut cursor = Cursor::new(&out);
            assert_eq!(cursor.long().unwrap(), v);
            assert_eq!(cursor.remaining(), 0);
        }
    }

    #[test]
    fn corrupt_varints_are_errors() {
        assert_eq!(Cursor::new(&[0x80]).long(), Err(ErrorKind::Truncated));
        assert_eq!(Cursor::new(&[0xff; 11]).long(), Err(ErrorKind::BadVarint));
        // A tenth byte's bits past the 64th are dropped, as other Avro readers drop them.
        let mut ten = [0xff; 10];
        ten[9] = 0x7e;
        assert_eq!(Cursor::new(&ten).long(), Ok(-(1 << 62)));
        assert_eq!(Cursor::new(&[0x02]).bytes(), Err(ErrorKind::Truncated));
        assert_eq!(Cursor::new(&[0x01]).bytes(), Err(ErrorKind::NegativeLength));
    }

    #[test]
    fn negative_count_blocks_must_state_their_true_size() {
        // One block of -2 items whose size says 3 bytes: two one-byte items, then 0 (end).
        let mut bytes = Vec::new();
        for value in [-2, 3] {
            write_long(&mut bytes, value);
        }
        bytes.extend_from_slice(&[0, 0, 0]);
        let mut cur = Cursor::new(&bytes);
        let (count, size) = cur.block().unwrap();
        assert_eq!((count, size), (2, Some(3)));
        let start = cur.pos();
        cur.take(2).unwrap();
        assert_eq!(cur.end_block(start, size), Err(ErrorKind::BlockSize));
        assert_eq!(cur.end_block(start, Some(2)), Ok(()));
        assert_eq!(cur.end_block(start, None), Ok(()));
    }
}
