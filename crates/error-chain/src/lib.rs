//! An error and its sources on one line: `a: b: c`, and a bound on how much of an untrusted
//! value such a line may quote.
//!
//! Every gvm-vgpu binary reports a failure the same way: the error's own message, then each
//! [`std::error::Error::source`] in turn, joined by `": "` (what `anyhow` prints for `{:#}`).
//! The crate has no dependencies, so the static guest agent, the libvirt hook and the daemon
//! can all link it.

#![deny(missing_docs)]

use std::error::Error;

/// `e`'s message followed by the message of each of its sources, joined by `": "`:
/// `cannot create vGPU: writing …/create failed: File exists (os error 17)`.
pub fn error_chain(e: &dyn Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

/// `s` cut to at most about `max` bytes by dropping its middle (on character boundaries),
/// marked `…[N bytes cut]…`: a parser's message that quotes a huge value of a hostile input
/// keeps its start (what is wrong) and its end (what was expected, and where), and a 64 KiB
/// line cannot make a 64 KiB answer or log line.
pub fn clip_middle(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut head = max / 2;
    while !s.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = s.len() - (max / 2).saturating_sub(32);
    while !s.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{}…[{} bytes cut]…{}", &s[..head], tail - head, &s[tail..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt;

    /// An error with a message and an optional source.
    #[derive(Debug)]
    struct Layer {
        message: &'static str,
        source: Option<Box<Layer>>,
    }

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.message)
        }
    }

    impl Error for Layer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.source.as_deref().map(|s| s as &(dyn Error + 'static))
        }
    }

    fn layers(messages: &[&'static str]) -> Option<Box<Layer>> {
        let (first, rest) = messages.split_first()?;
        Some(Box::new(Layer {
            message: first,
            source: layers(rest),
        }))
    }

    #[test]
    fn an_error_without_a_source_is_its_message() {
        let Some(e) = layers(&["no such parent"]) else {
            panic!("no layers")
        };
        assert_eq!(error_chain(&*e), "no such parent");
    }

    #[test]
    fn every_source_follows_in_order_after_a_colon() {
        let Some(e) = layers(&["cannot create vGPU", "writing create failed", "EEXIST"]) else {
            panic!("no layers")
        };
        assert_eq!(
            error_chain(&*e),
            "cannot create vGPU: writing create failed: EEXIST"
        );
    }

    #[test]
    fn a_long_message_keeps_its_start_and_end_and_stays_bounded() {
        assert_eq!(clip_middle("short", 100), "short");
        let long = format!("bad value '{}' at line 3", "é".repeat(50_000));
        let cut = clip_middle(&long, 400);
        assert!(cut.len() < 500, "{}", cut.len());
        assert!(
            cut.starts_with("bad value '") && cut.ends_with("at line 3"),
            "{cut}"
        );
        assert!(cut.contains("bytes cut"));
    }
}
