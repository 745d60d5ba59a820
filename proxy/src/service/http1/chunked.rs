//! Finding the end of a chunked body whose bytes are forwarded as they are.
//!
//! The fast path relays an upstream's chunked response verbatim (no re-encoding), so all it
//! needs is to know where the message ends: after the last chunk, the trailer section and its
//! final CRLF (RFC 9112 §7.1). The grammar is checked strictly (bare LF, non-hex sizes and
//! sizes over 64 bits are errors): a body we cannot delimit exactly must never leave bytes
//! behind on a connection that would be reused.

/// Where the tracker is in the chunked grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

/// The body is not valid chunked encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// Follows a chunked body across any split of its bytes.
#[derive(Debug, Clone)]
pub struct ChunkedTracker {
    state: State,
    size: u64,
    digits: u8,
}

impl Default for ChunkedTracker {
    fn default() -> Self {
        ChunkedTracker {
            state: State::Size,
            size: 0,
            digits: 0,
        }
    }
}

impl ChunkedTracker {
    /// The whole body, trailers included, has been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consume the next bytes of the stream; returns how many belong to the body (fewer than
    /// `buf.len()` only once the body ended inside `buf`).
    pub fn feed(&mut self, buf: &[u8]) -> Result<usize, Malformed> {
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            match self.state {
                State::Done => return Ok(i),
                State::Data => {
                    let take = usize::try_from(self.size)
                        .unwrap_or(usize::MAX)
                        .min(buf.len() - i);
                    self.size -= take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::Size => match hex(b) {
                    Some(d) => {
                        if self.digits == 16 {
                            return Err(Malformed);
                        }
                        self.digits += 1;
                        self.size = self.size << 4 | u64::from(d);
                    }
                    None if self.digits == 0 => return Err(Malformed),
                    None => match b {
                        b';' | b' ' | b'\t' => self.state = State::Ext,
                        b'\r' => self.state = State::SizeLf,
                        _ => return Err(Malformed),
                    },
                },
                State::Ext => match b {
                    b'\r' => self.state = State::SizeLf,
                    b'\n' => return Err(Malformed),
                    _ => {}
                },
                State::SizeLf => {
                    expect(b, b'\n')?;
                    self.state = if self.size == 0 {
                        State::TrailerStart
                    } else {
                        State::Data
                    };
                }
                State::DataCr => {
                    expect(b, b'\r')?;
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    expect(b, b'\n')?;
                    self.state = State::Size;
                    self.size = 0;
                    self.digits = 0;
                }
                State::TrailerStart => match b {
                    b'\r' => self.state = State::EndLf,
                    b'\n' => return Err(Malformed),
                    _ => self.state = State::TrailerLine,
                },
                State::TrailerLine => match b {
                    b'\r' => self.state = State::TrailerLf,
                    b'\n' => return Err(Malformed),
                    _ => {}
                },
                State::TrailerLf => {
                    expect(b, b'\n')?;
                    self.state = State::TrailerStart;
                }
                State::EndLf => {
                    expect(b, b'\n')?;
                    self.state = State::Done;
                    return Ok(i + 1);
                }
            }
            i += 1;
        }
        Ok(i)
    }
}

/// The one byte the grammar allows here.
fn expect(b: u8, want: u8) -> Result<(), Malformed> {
    if b == want {
        Ok(())
    } else {
        Err(Malformed)
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `body` split at every possible point, and byte by byte: the end is found at the
    /// same place each time.
    fn end_of(body: &[u8]) -> Result<Option<usize>, Malformed> {
        let whole = {
            let mut t = ChunkedTracker::default();
            let n = t.feed(body)?;
            t.is_done().then_some(n)
        };
        for split in 0..=body.len() {
            let mut t = ChunkedTracker::default();
            let a = t.feed(&body[..split])?;
            let n = if t.is_done() {
                a
            } else {
                a + t.feed(&body[split..])?
            };
            assert_eq!(t.is_done().then_some(n), whole, "split at {split}");
        }
        let mut t = ChunkedTracker::default();
        let mut n = 0;
        for b in body {
            if t.is_done() {
                break;
            }
            n += t.feed(std::slice::from_ref(b))?;
        }
        assert_eq!(t.is_done().then_some(n), whole, "byte by byte");
        Ok(whole)
    }

    #[test]
    fn finds_the_end_after_the_last_chunk_and_trailers() {
        let body = b"5\r\nhello\r\n1a;name=v\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n";
        assert_eq!(end_of(body), Ok(Some(body.len())));
        let with_trailers = b"3\r\nabc\r\n0\r\nx-sum: 1\r\ny: 2\r\n\r\n";
        assert_eq!(end_of(with_trailers), Ok(Some(with_trailers.len())));
        // Bytes after the end (a pipelined response) are not counted.
        let mut more = body.to_vec();
        more.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        assert_eq!(end_of(&more), Ok(Some(body.len())));
        // Chunk data may contain CRLF and zeros.
        let tricky = b"4\r\n\r\n0\r\r\n0000\r\n\r\n";
        assert_eq!(end_of(tricky), Ok(Some(tricky.len())));
    }

    #[test]
    fn an_unfinished_body_is_not_done() {
        assert_eq!(end_of(b"5\r\nhel"), Ok(None));
        assert_eq!(end_of(b"0\r\n"), Ok(None));
        assert_eq!(end_of(b"0\r\nx: y\r\n"), Ok(None));
    }

    #[test]
    fn malformed_bodies_are_refused() {
        for bad in [
            &b"\r\n"[..],
            b"g\r\n",
            b"5\nhello\r\n",
            b"5\r\nhelloX\r\n",
            b"5\r\nhello\r\r",
            b"0\r\n\n",
            b"0\r\nx: y\n",
            b"11111111111111111\r\n",
            b"-1\r\n",
        ] {
            let mut t = ChunkedTracker::default();
            assert_eq!(
                t.feed(bad),
                Err(Malformed),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // The largest 64-bit size parses; one more digit does not.
        let mut t = ChunkedTracker::default();
        assert_eq!(t.feed(b"ffffffffffffffff\r\n"), Ok(18));
        assert!(!t.is_done());
    }
}
