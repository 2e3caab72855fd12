//! Running `scripts/guest/prepare.sh` and describing what it prepared.
//!
//! The script does the fetching and building (kernel, modules, `mtty.ko`) and
//! caches it per kernel ABI; this module runs it, turns its exit code 3 ("the kernel
//! packages cannot be fetched") into [`PrepareOutcome::Unavailable`] so that tests
//! can skip, and hands out the paths of what it left behind.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::error::{tail, HarnessError};

/// The exit code with which `prepare.sh` says the kernel packages cannot be fetched.
pub const UNAVAILABLE_EXIT: i32 = 3;

/// The environment variable naming the guest cache directory.
pub const CACHE_ENV: &str = "GVM_VGPU_TEST_CACHE";

/// A prepared guest kernel: `vmlinuz`, uncompressed modules, and `mtty.ko`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedKernel {
    dir: PathBuf,
    abi: String,
}

impl PreparedKernel {
    /// Describe an already prepared directory (as printed by `prepare.sh`).
    pub fn from_dir(dir: impl Into<PathBuf>) -> Result<Self, HarnessError> {
        let dir = dir.into();
        let abi_file = dir.join("abi");
        let abi = std::fs::read_to_string(&abi_file)
            .map_err(|e| HarnessError::io(format!("reading {}", abi_file.display()), e))?
            .trim()
            .to_string();
        Ok(PreparedKernel { dir, abi })
    }

    /// The directory holding everything.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The kernel ABI, e.g. `6.1.0-56-amd64`.
    pub fn abi(&self) -> &str {
        &self.abi
    }

    /// The kernel image.
    pub fn vmlinuz(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }

    /// The uncompressed `.ko` file of a module (`mtty` included).
    pub fn module_path(&self, name: &str) -> PathBuf {
        self.dir.join("modules").join(format!("{name}.ko"))
    }
}

/// What [`prepare`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrepareOutcome {
    /// The guest kernel is ready.
    Ready(PreparedKernel),
    /// The kernel packages cannot be fetched here; the reason is for a SKIP line.
    Unavailable(String),
}

/// The cache directory: `$GVM_VGPU_TEST_CACHE`, else `<repo>/.cache/guest`.
pub fn default_cache_dir(repo: &Path) -> PathBuf {
    match std::env::var_os(CACHE_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => repo.join(".cache").join("guest"),
    }
}

/// Run `prepare.sh` (instant when the cache is complete) and describe the result.
pub fn prepare(repo: &Path, cache: Option<&Path>) -> Result<PrepareOutcome, HarnessError> {
    let script = repo.join("scripts/guest/prepare.sh");
    let cache = cache.map_or_else(|| default_cache_dir(repo), Path::to_path_buf);
    let output = Command::new("sh")
        .arg(&script)
        .arg(&cache)
        .output()
        .map_err(|source| HarnessError::Spawn {
            program: "sh".into(),
            package: "dash",
            source,
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    match output.status.code() {
        Some(0) => {}
        Some(UNAVAILABLE_EXIT) => {
            return Ok(PrepareOutcome::Unavailable(tail(&output.stderr, 3)));
        }
        _ => {
            return Err(HarnessError::CommandFailed {
                program: format!("{} {}", script.display(), cache.display()),
                status: output.status.to_string(),
                output_tail: tail(&output.stderr, 20),
            })
        }
    }
    let dir = last_line(&stdout).ok_or_else(|| HarnessError::CommandFailed {
        program: script.display().to_string(),
        status: "success but no directory printed".into(),
        output_tail: tail(&output.stderr, 20),
    })?;
    PreparedKernel::from_dir(dir).map(PrepareOutcome::Ready)
}

/// The last non-empty line of a script's output.
fn last_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).rfind(|l| !l.is_empty())
}

/// The guest kernel to boot, or why guest tests cannot run here: QEMU missing, or the kernel
/// packages cannot be fetched (the only skips the guest suite allows itself).
pub fn kernel_or_skip(repo: &Path) -> Result<Result<PreparedKernel, String>, HarnessError> {
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        return Ok(Err(
            "qemu-system-x86_64 is not installed (Debian: qemu-system-x86)".into(),
        ));
    }
    Ok(match prepare(repo, None)? {
        PrepareOutcome::Ready(k) => Ok(k),
        PrepareOutcome::Unavailable(why) => {
            Err(format!("kernel packages cannot be fetched: {why}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directory_is_the_last_printed_line() {
        assert_eq!(
            last_line("noise\n/c/6.1.0-56-amd64\n\n"),
            Some("/c/6.1.0-56-amd64")
        );
        assert_eq!(last_line("\n \n"), None);
    }

    #[test]
    fn a_prepared_dir_names_its_files() -> Result<(), HarnessError> {
        let tmp = tempfile::tempdir().map_err(|e| HarnessError::io("tempdir", e))?;
        std::fs::write(tmp.path().join("abi"), "6.1.0-99-amd64\n")
            .map_err(|e| HarnessError::io("write abi", e))?;
        let k = PreparedKernel::from_dir(tmp.path())?;
        assert_eq!(k.abi(), "6.1.0-99-amd64");
        assert_eq!(k.vmlinuz(), tmp.path().join("vmlinuz"));
        assert_eq!(k.module_path("mtty"), tmp.path().join("modules/mtty.ko"));
        Ok(())
    }

    #[test]
    fn a_dir_without_abi_is_an_error_naming_it() {
        let err = PreparedKernel::from_dir("/nonexistent/guest").err();
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("/nonexistent/guest/abi"), "{msg}");
    }
}
