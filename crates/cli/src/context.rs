//! What every command needs: the host root, the clients built on it (mdev, both vGPU kinds,
//! GVM), and the catalog.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use gvm_catalog::Catalog;
use gvm_gcgroup::GvmTree;
use gvm_host_root::HostRoot;
use gvm_mdev::MdevHost;
use gvm_vgpu_host::VgpuHost;

use crate::cli::GlobalArgs;

/// Host access and configuration for one command run.
pub struct Context {
    /// Where host paths live.
    pub host: HostRoot,
    /// The mdev sysfs client.
    pub mdev: MdevHost,
    /// Both kinds of vGPU (mdev devices and SR-IOV VF vGPUs) by UUID, over the same root.
    pub vgpu: VgpuHost,
    /// The GVM debugfs client.
    pub gvm: GvmTree,
    /// Catalog directories layered over the built-in catalog, in order.
    pub catalog_dirs: Vec<PathBuf>,
    /// The `--catalog` directories given on the command line: commands the daemon answers
    /// refuse them (the daemon reads its own catalog).
    pub catalog_flags: Vec<PathBuf>,
    /// Print JSON rather than tables.
    pub json: bool,
}

impl Context {
    /// Build the context from the global options; the host root must be a directory.
    pub fn new(global: &GlobalArgs) -> Result<Self> {
        check_root(&global.root)?;
        let host = HostRoot::new(&global.root);
        let mut catalog_dirs = Catalog::default_dirs(&host);
        catalog_dirs.extend(global.catalog_dirs.iter().cloned());
        Ok(Context {
            mdev: MdevHost::new(host.clone()),
            vgpu: VgpuHost::new(host.clone()),
            gvm: GvmTree::new(host.clone()),
            host,
            catalog_dirs,
            catalog_flags: global.catalog_dirs.clone(),
            json: global.json,
        })
    }

    /// Fail unless the host root has a sys/ tree to read: a root that is not a host (a
    /// typo, a stopped simulated host's empty mount point) must not read as a host
    /// without vGPUs.
    pub fn require_sysfs(&self) -> Result<()> {
        let root = self.host.root().display();
        let sys = self.host.sys_dir();
        let fix = format!(
            "start the simulated host there with `gvm-vgpu-sim --root {root}`, or pass \
             --root / (or set GVM_VGPU_ROOT) for this host"
        );
        match std::fs::read_dir(&sys).map(|mut entries| entries.next().is_some()) {
            Ok(true) => Ok(()),
            Ok(false) => bail!(
                "host root {root} has no sys/ tree ({} is empty): {fix}",
                sys.display()
            ),
            Err(e) => Err(e).with_context(|| {
                format!(
                    "host root {root} has no sys/ tree (cannot read {}): {fix}",
                    sys.display()
                )
            }),
        }
    }

    /// Load the vGPU type catalog (built-in types plus every catalog directory).
    pub fn catalog(&self) -> Result<Catalog> {
        Catalog::load_with_builtin(&self.catalog_dirs).context("cannot load the vGPU type catalog")
    }
}

/// The host root must be a directory: every host path is read under it.
fn check_root(root: &Path) -> Result<()> {
    let fix = "pass --root (or GVM_VGPU_ROOT) the directory a simulated host serves \
               (`gvm-vgpu-sim --root DIR`), or / on a real host";
    match std::fs::metadata(root) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => bail!("host root {} is not a directory: {fix}", root.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("host root {} does not exist: {fix}", root.display())
        }
        Err(e) => Err(e).with_context(|| format!("cannot use host root {}: {fix}", root.display())),
    }
}
