//! The gcgroup backends `gvm-vgpud` drives, built once in `main` and handed out.
//!
//! Every backend is a peer behind `gvm_gcgroup::GcgroupBackend`: GVM's debugfs tree
//! (`gvm_gcgroup::GvmTree`), the CUDA shim's control blocks
//! (`gvm_shim_host::backend::ShimBackend`), or both behind `gvm_gcgroup::Composite`
//! (`--backend auto`). [`build`] makes the chosen one together with the two handles the
//! shim needs shared: the registry the shim socket's listener fills, and the gating choice
//! the scheduler makes. Whoever needs one of them is given it; nothing is looked up
//! through process-wide state.

use std::sync::Arc;

use gvm_gcgroup::{Composite, GcgroupBackend, GvmTree};
use gvm_host_root::HostRoot;
use gvm_shim_host::backend::ShimBackend;
use gvm_shim_host::blocks::SHM_DIR;
use gvm_shim_host::gating::GatingModes;
use gvm_shim_host::registry::ShimRegistry;
use tracing::info;

/// Which gcgroup backend the daemon drives (`--backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BackendKind {
    /// GVM's debugfs tree only (the GVM driver).
    Gvm,
    /// The CUDA shim's control blocks only (stock drivers, `LD_PRELOAD=libgvm_cuda.so`).
    Shim,
    /// GVM for the processes GVM has registered, the shim for the others; on a host
    /// without the GVM tree that is the shim alone.
    #[default]
    Auto,
}

/// The backend and the handles shared with the parts that feed or steer it.
pub struct Backends {
    /// What the daemon core reads and writes gcgroups through.
    pub gcgroups: Box<dyn GcgroupBackend>,
    /// The registered shim processes: the shim socket's listener writes it, the shim
    /// backend reads it. `None` for `--backend gvm` (no shim socket then).
    pub shim_registry: Option<Arc<ShimRegistry>>,
    /// Which GPUs the scheduler gates itself (read by the shim backend).
    pub gating: Arc<GatingModes>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends")
            .field("gcgroups", &self.gcgroups.name())
            .field("shim_registry", &self.shim_registry.is_some())
            .finish()
    }
}

impl Backends {
    /// Any backend (a test's fake, say) with fresh handles.
    pub fn of(gcgroups: Box<dyn GcgroupBackend>) -> Backends {
        Backends {
            gcgroups,
            shim_registry: None,
            gating: Arc::new(GatingModes::new()),
        }
    }
}

/// The backends of `kind` on `host`.
pub fn build(kind: BackendKind, host: &HostRoot) -> Backends {
    let registry = Arc::new(ShimRegistry::default());
    let gating = Arc::new(GatingModes::new());
    let shim = || ShimBackend::new(host.clone(), registry.clone(), gating.clone());
    let gcgroups: Box<dyn GcgroupBackend> = match kind {
        BackendKind::Gvm => Box::new(GvmTree::new(host.clone())),
        BackendKind::Shim => Box::new(shim()),
        BackendKind::Auto => {
            info!(
                gvm_tree = host.gvm_processes_dir().is_dir(),
                shim_dir = %host.path(SHM_DIR).display(),
                "gcgroup backend auto: GVM-registered processes through GVM, the others through the CUDA shim"
            );
            Box::new(Composite::new(
                GvmTree::new(host.clone()),
                shim(),
                "gvm+shim",
            ))
        }
    };
    Backends {
        gcgroups,
        shim_registry: (kind != BackendKind::Gvm).then_some(registry),
        gating,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_without_a_gvm_tree_is_the_shim_alone_and_each_kind_names_itself() {
        let Ok(dir) = tempfile::tempdir() else {
            println!("SKIP: no temp dir");
            return;
        };
        let host = HostRoot::new(dir.path());
        assert!(std::fs::create_dir_all(host.path(SHM_DIR)).is_ok());
        let auto = build(BackendKind::Auto, &host);
        assert_eq!(auto.gcgroups.name(), "gvm+shim");
        assert_eq!(auto.gcgroups.processes().ok(), Some(vec![]));
        assert!(auto.shim_registry.is_some());
        assert_eq!(build(BackendKind::Shim, &host).gcgroups.name(), "shim");
        let gvm = build(BackendKind::Gvm, &host);
        assert_eq!(gvm.gcgroups.name(), "gvm");
        assert!(
            gvm.shim_registry.is_none(),
            "no shim socket for --backend gvm"
        );
    }
}
