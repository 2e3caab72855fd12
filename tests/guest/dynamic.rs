//! Dynamically linked host programs in the guest: the C library pieces they need.
//!
//! Most of the guest is static (busybox, the project's `+crt-static` binaries), but the
//! CUDA interposer is a glibc `cdylib` and the programs it is preloaded into are ordinary
//! dynamic executables. [`shared_libraries`] asks the host's `ldd` what they load (the
//! dynamic loader, `libc.so.6`, `libgcc_s.so.1`, ...); the test copies each to the same
//! absolute path in the guest, so the guest's loader finds them as the host's does.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::error::{tail, HarnessError};

/// The files `ldd` says a program loads, in its order: `name => /path (addr)` lines give
/// `/path`, the loader's own `/path (addr)` line gives `/path`; the kernel's vDSO (no file)
/// and libraries `ldd` could not find (`=> not found`) give nothing.
pub fn parse_ldd(output: &str) -> Vec<PathBuf> {
    output
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let file = match line.split_once("=>") {
                Some((_, right)) => right.trim(),
                None => line,
            };
            let path = file.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// The shared libraries (loader included) that `programs` load together, each once, in
/// the order `ldd` first names them.
pub fn shared_libraries(programs: &[&Path]) -> Result<Vec<PathBuf>, HarnessError> {
    let mut all: Vec<PathBuf> = Vec::new();
    for program in programs {
        let output = Command::new("ldd")
            .arg(program)
            .output()
            .map_err(|source| HarnessError::Spawn {
                program: "ldd".into(),
                package: "libc-bin",
                source,
            })?;
        if !output.status.success() {
            return Err(HarnessError::CommandFailed {
                program: format!("ldd {}", program.display()),
                status: output.status.to_string(),
                output_tail: tail(&output.stderr, 5),
            });
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        if stdout.contains("not found") {
            return Err(HarnessError::CommandFailed {
                program: format!("ldd {}", program.display()),
                status: "a library it needs is missing on this host".into(),
                output_tail: stdout.into_owned(),
            });
        }
        for lib in parse_ldd(&stdout) {
            if !all.contains(&lib) {
                all.push(lib);
            }
        }
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_lines_give_the_files_loaded_and_skip_the_vdso() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd5a3e9000)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f10)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f20)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f30)\n\
                   \tlibfoo.so.1 => not found\n";
        assert_eq!(
            parse_ldd(out),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(parse_ldd("\tstatically linked\n").is_empty());
    }

    #[test]
    fn a_missing_program_is_an_error_naming_it() {
        let err = shared_libraries(&[Path::new("/nonexistent/prog")])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("/nonexistent/prog"), "{err}");
    }
}
