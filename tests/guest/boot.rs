//! Booting an initramfs under `qemu-system-x86_64 -accel tcg` and reading its console.
//!
//! The guest's serial console is QEMU's standard output (`-nographic`). Everything
//! is kept ([`GuestRun::console`]) for failure messages; results are only the lines
//! that start with [`RESULT_MARKER`], which the test script prints. The run ends when
//! the guest powers off (QEMU exits) or at the time limit, when QEMU is killed.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::error::HarnessError;
use super::image::EXIT_MARKER;

/// The prefix of a result line on the guest console.
pub const RESULT_MARKER: &str = "GVMRESULT ";

/// How to run QEMU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootOptions {
    /// The kernel image.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
    /// Guest memory in MiB (256 is plenty for busybox + mdev).
    pub memory_mib: u32,
    /// Kill QEMU after this long.
    pub timeout: Duration,
    /// Added to the kernel command line after `console=ttyS0 quiet panic=-1`.
    pub extra_append: String,
    /// Extra QEMU arguments (e.g. a virtio-serial port).
    pub extra_args: Vec<String>,
    /// The QEMU binary.
    pub qemu: PathBuf,
}

impl BootOptions {
    /// Defaults: 256 MiB, 90 s, no extra arguments, `qemu-system-x86_64` from `PATH`.
    pub fn new(kernel: impl Into<PathBuf>, initrd: impl Into<PathBuf>) -> Self {
        BootOptions {
            kernel: kernel.into(),
            initrd: initrd.into(),
            memory_mib: 256,
            timeout: Duration::from_secs(90),
            extra_append: String::new(),
            extra_args: Vec::new(),
            qemu: PathBuf::from("qemu-system-x86_64"),
        }
    }

    /// Change the time limit.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Add QEMU arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.extra_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The full QEMU argument list (without the program).
    pub fn qemu_args(&self) -> Vec<String> {
        let mut append = String::from("console=ttyS0 quiet panic=-1");
        if !self.extra_append.is_empty() {
            append.push(' ');
            append.push_str(&self.extra_append);
        }
        let mut args: Vec<String> = [
            "-accel",
            "tcg",
            // RDRAND lets the guest's random pool initialise at once: getrandom(2)
            // (a v4 UUID) would otherwise block for a long time under TCG.
            "-cpu",
            "max",
            "-m",
            &self.memory_mib.to_string(),
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
            "-kernel",
            &self.kernel.to_string_lossy(),
            "-initrd",
            &self.initrd.to_string_lossy(),
            "-append",
            &append,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

/// How the guest run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestExit {
    /// QEMU exited by itself (the guest powered off) with this status code.
    Exited(Option<i32>),
    /// The time limit passed and QEMU was killed.
    TimedOut,
}

/// The outcome of [`boot`].
#[derive(Debug, Clone)]
pub struct GuestRun {
    /// Everything QEMU printed (the serial console, then QEMU's own messages).
    pub console: String,
    /// How it ended.
    pub exit: GuestExit,
    /// From QEMU's start to its end.
    pub elapsed: Duration,
}

impl GuestRun {
    /// The result lines, marker removed, in order.
    pub fn results(&self) -> Vec<String> {
        parse_results(&self.console)
    }

    /// The test script's exit status as printed by `/init`, if it got that far.
    pub fn script_status(&self) -> Option<i32> {
        self.console
            .lines()
            .filter_map(|l| l.trim_end_matches('\r').strip_prefix(EXIT_MARKER))
            .filter_map(|s| s.trim().parse().ok())
            .next_back()
    }

    /// Whether the guest powered off with the script's status 0.
    pub fn succeeded(&self) -> bool {
        self.exit == GuestExit::Exited(Some(0)) && self.script_status() == Some(0)
    }
}

/// The lines of `console` starting with [`RESULT_MARKER`], marker and `\r` removed.
///
/// A marker must start its line; kernel messages that happen to contain it further
/// in (`[ 1.2] GVMRESULT`) are not results.
pub fn parse_results(console: &str) -> Vec<String> {
    console
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter_map(|l| l.strip_prefix(RESULT_MARKER))
        .map(str::to_string)
        .collect()
}

/// Boot the guest and wait for it to power off or for the time limit.
pub fn boot(opts: &BootOptions) -> Result<GuestRun, HarnessError> {
    for (what, p) in [("kernel", &opts.kernel), ("initrd", &opts.initrd)] {
        if !Path::new(p).is_file() {
            return Err(HarnessError::io(
                format!("opening the guest {what} {}", p.display()),
                std::io::Error::from_raw_os_error(libc::ENOENT),
            ));
        }
    }
    let start = Instant::now();
    let mut child = Command::new(&opts.qemu)
        .args(opts.qemu_args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| HarnessError::Spawn {
            program: opts.qemu.display().to_string(),
            package: "qemu-system-x86",
            source,
        })?;
    let readers = [
        child.stdout.take().map(|s| spawn_reader(Box::new(s))),
        child.stderr.take().map(|s| spawn_reader(Box::new(s))),
    ];
    let exit = loop {
        match child.try_wait() {
            Ok(Some(status)) => break GuestExit::Exited(status.code()),
            Ok(None) if start.elapsed() >= opts.timeout => {
                // Ignore errors: it may have exited between the two calls.
                let _ = child.kill();
                let _ = child.wait();
                break GuestExit::TimedOut;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(HarnessError::io("waiting for qemu-system-x86_64", e)),
        }
    };
    let elapsed = start.elapsed();
    let mut console = String::new();
    for r in readers.into_iter().flatten() {
        let bytes = r.join().unwrap_or_default();
        console.push_str(&String::from_utf8_lossy(&bytes));
    }
    Ok(GuestRun {
        console,
        exit,
        elapsed,
    })
}

fn spawn_reader(mut src: Box<dyn Read + Send>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        // A read error ends the capture; what was read so far is kept.
        let _ = src.read_to_end(&mut buf);
        buf
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_marker_lines_only() {
        let console = "[    1.0] mdev: loaded\r\nGVMRESULT {\"a\":1}\r\nnoise GVMRESULT x\nGVMRESULT two\nGVMEXIT 0\n";
        assert_eq!(parse_results(console), vec!["{\"a\":1}", "two"]);
    }

    #[test]
    fn script_status_is_the_last_exit_marker() {
        let run = GuestRun {
            console: "GVMEXIT 0\nGVMEXIT 3\r\n".into(),
            exit: GuestExit::Exited(Some(0)),
            elapsed: Duration::ZERO,
        };
        assert_eq!(run.script_status(), Some(3));
        assert!(!run.succeeded());
        let ok = GuestRun {
            console: "GVMEXIT 0\n".into(),
            ..run.clone()
        };
        assert!(ok.succeeded());
        let killed = GuestRun {
            exit: GuestExit::TimedOut,
            ..ok
        };
        assert!(!killed.succeeded());
    }

    #[test]
    fn qemu_args_boot_the_kernel_under_tcg_with_extras_last() {
        let opts =
            BootOptions::new("/k/vmlinuz", "/k/initrd").args(["-device", "virtio-serial-pci"]);
        let args = opts.qemu_args();
        let joined = args.join(" ");
        assert!(
            joined.starts_with("-accel tcg -cpu max -m 256 -nographic -no-reboot"),
            "{joined}"
        );
        assert!(
            joined.contains("-kernel /k/vmlinuz -initrd /k/initrd"),
            "{joined}"
        );
        assert!(joined.contains("console=ttyS0 quiet panic=-1"), "{joined}");
        assert!(joined.ends_with("-device virtio-serial-pci"), "{joined}");
    }
}
