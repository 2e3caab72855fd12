//! One knob write, typed: what a planner decides and a backend carries out.
//!
//! A [`Knob`] is a value for one of GVM's three writable files (`memory.limit`,
//! `compute.priority`, `compute.freeze`). Planners produce them, and
//! [`crate::GcgroupBackend::write`] applies one, so the typed value travels from the
//! decision to the file without a bare number in between. The file names are the
//! constants of [`crate::tree`]; nothing else spells them.

use std::fmt;

use crate::tree::{COMPUTE_FREEZE, COMPUTE_PRIORITY, MEMORY_LIMIT};
use crate::value::{MemoryLimit, Priority};

/// A value for one writable gcgroup knob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Knob {
    /// `memory.limit`.
    MemoryLimit(MemoryLimit),
    /// `compute.priority`.
    Priority(Priority),
    /// `compute.freeze`.
    Frozen(bool),
}

impl Knob {
    /// The GVM file the knob lives in.
    pub fn file(&self) -> &'static str {
        match self {
            Knob::MemoryLimit(_) => MEMORY_LIMIT,
            Knob::Priority(_) => COMPUTE_PRIORITY,
            Knob::Frozen(_) => COMPUTE_FREEZE,
        }
    }

    /// The value as the file holds it, without the newline.
    pub fn text(&self) -> String {
        match self {
            Knob::MemoryLimit(m) => m.as_bytes().to_string(),
            Knob::Priority(p) => p.get().to_string(),
            Knob::Frozen(f) => u8::from(*f).to_string(),
        }
    }
}

impl fmt::Display for Knob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.file(), self.text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_knob_names_its_gvm_file_and_the_text_written() {
        let limit = Knob::MemoryLimit(MemoryLimit::Bytes(4 << 30));
        assert_eq!(
            (limit.file(), limit.text()),
            ("memory.limit", "4294967296".into())
        );
        let none = Knob::MemoryLimit(MemoryLimit::Unlimited);
        assert_eq!(none.text(), u64::MAX.to_string());
        let p = Knob::Priority(Priority::MIN);
        assert_eq!((p.file(), p.text()), ("compute.priority", "0".into()));
        assert_eq!(Knob::Frozen(true).to_string(), "compute.freeze=1");
    }

    #[test]
    fn a_knob_written_through_the_backend_trait_reads_back_and_a_gone_pid_says_so() {
        use crate::{GcgroupBackend, MemoryBackend};
        let mem = MemoryBackend::new();
        mem.register(42, 8);
        let backend: Box<dyn GcgroupBackend> = Box::new(mem);
        assert_eq!(backend.processes().ok(), Some(vec![42]));
        assert_eq!(backend.gpus(42).ok(), Some(vec![8]));
        let three = Priority::try_from(3).expect("3 is a priority");
        assert!(backend.write(42, 8, Knob::Priority(three)).is_ok());
        let limit = MemoryLimit::Bytes(1 << 30);
        assert!(backend.write(42, 8, Knob::MemoryLimit(limit)).is_ok());
        assert!(backend.write(42, 8, Knob::Frozen(true)).is_ok());
        let r = backend.read(42, 8).ok();
        assert_eq!(
            r.map(|r| (r.priority, r.memory_limit, r.frozen)),
            Some((three, limit, true))
        );
        let e = backend.write(7, 0, Knob::Frozen(true)).err();
        assert_eq!(e.map(|e| e.is_process_gone()), Some(true));
        assert!(Priority::try_from(17).is_err(), "no knob holds priority 17");
    }
}
