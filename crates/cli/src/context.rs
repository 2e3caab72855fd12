//! What every command needs: the host root, the clients built on it, and the catalog.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use gvm_catalog::Catalog;
use gvm_gcgroup::GvmTree;
use gvm_host_root::HostRoot;
use gvm_mdev::MdevHost;

use crate::cli::GlobalArgs;

/// Host access and configuration for one command run.
pub struct Context {
    /// Where host paths live.
    pub host: HostRoot,
    /// The mdev sysfs client.
    pub mdev: MdevHost,
    /// The GVM debugfs client.
    pub gvm: GvmTree,
    /// Catalog directories layered over the built-in catalog, in order.
    pub catalog_dirs: Vec<PathBuf>,
    /// Print JSON rather than tables.
    pub json: bool,
}

impl Context {
    /// Build the context from the global options.
    pub fn new(global: &GlobalArgs) -> Result<Self> {
        let host = HostRoot::new(&global.root);
        let mut catalog_dirs = Catalog::default_dirs(&host);
        catalog_dirs.extend(global.catalog_dirs.iter().cloned());
        Ok(Context {
            mdev: MdevHost::new(host.clone()),
            gvm: GvmTree::new(host.clone()),
            host,
            catalog_dirs,
            json: global.json,
        })
    }

    /// Load the vGPU type catalog (built-in types plus every catalog directory).
    pub fn catalog(&self) -> Result<Catalog> {
        Catalog::load_with_builtin(&self.catalog_dirs).context("cannot load the vGPU type catalog")
    }
}
