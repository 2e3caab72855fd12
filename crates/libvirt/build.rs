//! Finds libvirt's client library for the `connect` feature, and says how to install it if it is
//! missing.
//!
//! `virt-sys`'s own build script ignores a failed probe (so that docs.rs can build it) and emits
//! no link line; cargo then caches that empty result, and the link fails with
//! `undefined symbol: virGetLastError` even after `libvirt-dev` is installed. This script fails
//! instead, naming the package, and because a failed build script is never cached it runs again
//! on the next build and emits the link line itself: installing the package is enough, no
//! `cargo clean` needed.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_LIBDIR");
    if std::env::var_os("CARGO_FEATURE_CONNECT").is_none() {
        return;
    }
    let probe = Command::new("pkg-config")
        .args(["--libs-only-L", "--libs-only-l", "libvirt"])
        .output();
    let libs = match probe {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        Ok(out) => fail(&format!(
            "pkg-config does not know libvirt ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => fail(&format!("pkg-config could not be run ({e})")),
    };
    for flag in libs.split_whitespace() {
        if let Some(dir) = flag.strip_prefix("-L") {
            println!("cargo:rustc-link-search=native={dir}");
            println!("cargo:rerun-if-changed={dir}");
        } else if let Some(lib) = flag.strip_prefix("-l") {
            println!("cargo:rustc-link-lib={lib}");
        }
    }
}

fn fail(why: &str) -> ! {
    eprintln!(
        "error: gvm-libvirt's `connect` feature links libvirt's client library, but {why}.\n\
         Install it: `apt-get install libvirt-dev pkg-config` (or `bash scripts/install-deps.sh build`),\n\
         then build again; no `cargo clean` is needed. To build without libvirt instead:\n\
         `cargo build --no-default-features -p gvm-libvirt` (and the same for gvm-vgpud, gvm-vgpu-cli)."
    );
    std::process::exit(1);
}
