//! A real Linux guest for tests: prepare it, pack an initramfs, boot it, read results.
//!
//! The build machines have no VFIO or mdev in their own kernel, so the kernel's
//! mdev framework is exercised inside a QEMU guest under TCG (software emulation;
//! the host's nested KVM cannot run stock kernels). The pieces:
//!
//! 1. [`prepare`] runs `scripts/guest/prepare.sh`, which fetches the kernel Debian
//!    currently ships (`linux-image-amd64`'s dependency), its vfio/mdev/virtio
//!    modules, and builds the `mtty` sample parent out of tree. The result is cached
//!    per kernel ABI; when the packages cannot be fetched the tests skip.
//! 2. [`GuestImage`] packs a busybox initramfs: modules loaded in order by `/init`,
//!    the project's statically linked binaries ([`build_static`]), extra files, and
//!    the test's own shell script, after which the guest powers off.
//! 3. [`boot`] runs `qemu-system-x86_64 -accel tcg` on it with a time limit and
//!    returns the serial console; results are the lines the script printed behind a
//!    marker ([`RESULT_MARKER`]), so kernel messages cannot be mistaken for them.
//! 4. The simulated host's side: the host binaries, the CLI, the guest's
//!    virtio-serial ports and a [`ControlPort`] to take turns with the guest script;
//!    [`shared_libraries`] collects what a dynamically linked program needs in the guest.
//!
//! ```no_run
//! use gvm_vgpu_e2e::guest::{boot, prepare, BootOptions, GuestImage, PrepareOutcome};
//! # fn main() -> Result<(), gvm_vgpu_e2e::guest::HarnessError> {
//! let repo = gvm_vgpu_e2e::guest::repo_root();
//! let PrepareOutcome::Ready(kernel) = prepare(&repo, None)? else { return Ok(()) };
//! let work = tempfile::tempdir().map_err(|e| gvm_vgpu_e2e::guest::HarnessError::io("tempdir", e))?;
//! let initrd = GuestImage::new(&kernel)
//!     .module("vfio").module("vfio_iommu_type1").module("mdev").module("mtty")
//!     .init_script("echo \"GVMRESULT $(ls /sys/class/mdev_bus)\"")
//!     .build(work.path())?;
//! let run = boot(&BootOptions::new(kernel.vmlinuz(), &initrd))?;
//! assert_eq!(run.results(), vec!["mtty"]);
//! # Ok(()) }
//! ```

pub mod conformance;

mod boot;
mod build;
mod dynamic;
mod error;
mod host;
mod image;
mod prepare;

pub use boot::{boot, parse_results, BootOptions, GuestExit, GuestRun, RESULT_MARKER};
pub use build::{build_static, cargo_command};
pub use dynamic::{parse_ldd, shared_libraries};
pub use error::HarnessError;
pub use host::{
    build_host_packages, cli, port_lookup_script, virtio_serial_args, ControlPort, KillOnDrop,
};
pub use image::{GuestFile, GuestImage};
pub use prepare::{
    default_cache_dir, kernel_or_skip, prepare, PrepareOutcome, PreparedKernel, UNAVAILABLE_EXIT,
};

use std::path::PathBuf;

/// The workspace root (the parent of this package's directory).
pub fn repo_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    match here.parent() {
        Some(p) => p.to_path_buf(),
        None => here,
    }
}
