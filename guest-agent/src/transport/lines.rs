//! Framing what the host sends: `\n`-terminated lines of at most
//! [`MAX_LINE_BYTES`] bytes, in a buffer that never holds more than one line.
//!
//! A line longer than the limit is not kept: its bytes are skipped up to the next
//! newline and it comes out once as [`Framed::Oversize`], so a host (or anything
//! on the port) writing without newlines costs the agent at most 64 KiB.

use gvm_agent_proto::MAX_LINE_BYTES;

/// One thing framed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framed {
    /// A whole line, without its newline.
    Line(Vec<u8>),
    /// A line over the limit was skipped; how many bytes it had (so far, at least).
    Oversize(usize),
}

/// The incoming line buffer of one connection.
#[derive(Debug, Default)]
pub struct LineFramer {
    buf: Vec<u8>,
    /// Skipping an oversize line: its length so far.
    skipping: Option<usize>,
}

impl LineFramer {
    /// Take `bytes` as they came; returns what they completed.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Vec<Framed> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let nl = bytes.iter().position(|&b| b == b'\n');
            let (part, rest) = match nl {
                Some(at) => (&bytes[..at], Some(&bytes[at + 1..])),
                None => (bytes, None),
            };
            if let Some(skipped) = self.skipping.as_mut() {
                *skipped = skipped.saturating_add(part.len());
            } else if self.buf.len() + part.len() > MAX_LINE_BYTES {
                self.skipping = Some(self.buf.len() + part.len());
                self.buf = Vec::new();
            } else {
                self.buf.extend_from_slice(part);
            }
            match rest {
                Some(r) => {
                    match self.skipping.take() {
                        Some(n) => out.push(Framed::Oversize(n)),
                        None => out.push(Framed::Line(std::mem::take(&mut self.buf))),
                    }
                    bytes = r;
                }
                None => break,
            }
        }
        out
    }

    /// Forget a partial line (a new connection starts clean).
    pub fn reset(&mut self) {
        self.buf = Vec::new();
        self.skipping = None;
    }

    /// Bytes buffered now (at most [`MAX_LINE_BYTES`]).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_reads_come_out_whole() {
        let mut f = LineFramer::default();
        assert_eq!(f.feed(b"ab"), vec![]);
        assert_eq!(
            f.feed(b"c\nd\n\ne"),
            vec![
                Framed::Line(b"abc".to_vec()),
                Framed::Line(b"d".to_vec()),
                Framed::Line(vec![])
            ]
        );
        assert_eq!(f.buffered(), 1);
        f.reset();
        assert_eq!(f.feed(b"x\n"), vec![Framed::Line(b"x".to_vec())]);
    }

    #[test]
    fn an_oversize_line_is_skipped_within_the_bound_and_framing_resumes() {
        let mut f = LineFramer::default();
        let chunk = vec![b'a'; 40 * 1024];
        assert!(f.feed(&chunk).is_empty());
        assert!(f.feed(&chunk).is_empty());
        assert_eq!(f.buffered(), 0, "nothing past the limit is kept");
        for _ in 0..10 {
            assert!(f.feed(&chunk).is_empty());
            assert!(f.buffered() <= MAX_LINE_BYTES);
        }
        let got = f.feed(b"tail\nok\n");
        assert_eq!(got.len(), 2);
        assert!(matches!(got[0], Framed::Oversize(n) if n > 12 * 40 * 1024));
        assert_eq!(got[1], Framed::Line(b"ok".to_vec()));
        // Exactly the limit is still a line.
        let mut exact = vec![b'b'; MAX_LINE_BYTES];
        exact.push(b'\n');
        assert_eq!(
            f.feed(&exact),
            vec![Framed::Line(vec![b'b'; MAX_LINE_BYTES])]
        );
    }
}
