//! An error and its sources on one line: `a: b: c`.
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
}
