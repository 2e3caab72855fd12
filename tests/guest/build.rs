//! Building the project's binaries statically for the guest.
//!
//! The guest has no C library, so binaries are linked with `+crt-static` (glibc
//! static). They are built with their own `--target-dir` (`target/static`) so that
//! the different `RUSTFLAGS` never invalidate, or wait on, the normal build.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::error::{tail, HarnessError};

/// The target triple static guest binaries are built for.
pub const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";

/// The `cargo` that runs this test (`$CARGO`), else `cargo` from `PATH`.
pub fn cargo_command() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    Command::new(cargo)
}

/// `RUSTFLAGS` for a static, debug-info-free guest binary.
pub fn static_rustflags() -> &'static str {
    "-C target-feature=+crt-static -C strip=debuginfo"
}

/// Build `bin` of `package` statically with the workspace's `guest` profile (optimised, no
/// debug info, quick to build); return the binary's path.
///
/// Default features are off: they are the optional native libraries (libvirt for the CLI,
/// NVML for the agent) that a static binary cannot link or load.
pub fn build_static(repo: &Path, package: &str, bin: &str) -> Result<PathBuf, HarnessError> {
    let target_dir = repo.join("target").join("static");
    let output = cargo_command()
        .current_dir(repo)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("RUSTFLAGS", static_rustflags())
        .args([
            "build",
            "--quiet",
            "--profile",
            "guest",
            "--no-default-features",
        ])
        .args(["-p", package, "--bin", bin])
        .args(["--target", GUEST_TARGET, "--target-dir"])
        .arg(&target_dir)
        .output()
        .map_err(|source| HarnessError::Spawn {
            program: "cargo".into(),
            package: "rustup",
            source,
        })?;
    if !output.status.success() {
        return Err(HarnessError::CommandFailed {
            program: format!("cargo build --profile guest -p {package} --bin {bin} (static)"),
            status: output.status.to_string(),
            output_tail: tail(&output.stderr, 30),
        });
    }
    let path = static_binary_path(&target_dir, bin);
    if !path.is_file() {
        return Err(HarnessError::BinaryMissing {
            package: package.into(),
            path,
        });
    }
    Ok(path)
}

/// Where cargo leaves a static `guest`-profile binary under `target_dir`.
pub fn static_binary_path(target_dir: &Path, bin: &str) -> PathBuf {
    target_dir.join(GUEST_TARGET).join("guest").join(bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_binaries_live_under_the_target_triple() {
        assert_eq!(
            static_binary_path(Path::new("/r/target/static"), "gvm-vgpu"),
            PathBuf::from("/r/target/static/x86_64-unknown-linux-gnu/guest/gvm-vgpu")
        );
        assert!(static_rustflags().contains("+crt-static"));
    }
}
