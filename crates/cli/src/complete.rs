//! Values the shells complete dynamically (clap_complete's engine, `COMPLETE=bash
//! gvm-vgpu` prints the registration): vGPU UUIDs (live and defined), libvirt domains the
//! daemon follows, mdev parents and SR-IOV GPUs, and catalog type names, read from the host
//! at completion time.
//!
//! A completer sees no parsed options, so the host root is `GVM_VGPU_ROOT` (else `/`), not
//! `--root`. Completion never fails: what cannot be read completes nothing.

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap_complete::engine::CompletionCandidate;
use gvm_catalog::Catalog;
use gvm_host_root::HostRoot;
use gvm_mdev::MdevHost;

fn host() -> HostRoot {
    HostRoot::new(
        std::env::var_os("GVM_VGPU_ROOT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/")),
    )
}

fn candidates(values: BTreeSet<String>) -> Vec<CompletionCandidate> {
    values.into_iter().map(CompletionCandidate::new).collect()
}

fn uuid_set(host: &HostRoot) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = MdevHost::new(host.clone())
        .devices()
        .map(|d| d.into_iter().map(|d| d.uuid.to_string()).collect())
        .unwrap_or_default();
    // VF vGPUs on record (live or not: `remove` drops a record whose VF is gone).
    let records = gvm_vf::Assignments::new(gvm_vf::VfHost::new(host.clone()));
    out.extend(
        records
            .list()
            .into_iter()
            .flatten()
            .map(|a| a.uuid.to_string()),
    );
    // Stored definitions (`gvm-vgpu define`): gvm-vgpud's store, one `<uuid>.json` each.
    let defs = host.config_dir().join("vgpus");
    for e in std::fs::read_dir(defs).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let stem = name.strip_suffix(".json").unwrap_or(&name);
        if uuid::Uuid::try_parse(stem).is_ok() {
            out.insert(stem.to_string());
        }
    }
    out
}

/// The libvirt domains in the daemon's status file (`<run>/gvm-vgpu/libvirt.json`).
fn domain_set(host: &HostRoot) -> BTreeSet<String> {
    let path = host.run_dir().join("libvirt.json");
    let Ok(text) = std::fs::read_to_string(path) else {
        return BTreeSet::new();
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return BTreeSet::new();
    };
    v["domains"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// vGPU UUIDs: live (the kernel's mdev devices), VF vGPUs on record, and defined.
pub fn vgpu_uuids() -> Vec<CompletionCandidate> {
    candidates(uuid_set(&host()))
}

/// What a vGPU target may be: a UUID, or a libvirt domain the daemon follows.
pub fn targets() -> Vec<CompletionCandidate> {
    let h = host();
    let mut all = uuid_set(&h);
    all.extend(domain_set(&h));
    candidates(all)
}

/// libvirt domains the daemon follows.
pub fn domains() -> Vec<CompletionCandidate> {
    candidates(domain_set(&host()))
}

/// mdev parents (GPUs registered with the mdev core) and SR-IOV GPUs (PFs).
pub fn parents() -> Vec<CompletionCandidate> {
    let h = host();
    let mut all: BTreeSet<String> = MdevHost::new(h.clone())
        .parents()
        .map(|p| p.into_iter().map(|p| p.name).collect())
        .unwrap_or_default();
    all.extend(
        gvm_vf::VfHost::new(h)
            .pfs()
            .into_iter()
            .flatten()
            .map(|p| p.address),
    );
    candidates(all)
}

/// Catalog type names (built in, /usr/share and /etc under the root).
pub fn type_names() -> Vec<CompletionCandidate> {
    let dirs = Catalog::default_dirs(&host());
    candidates(
        Catalog::load_with_builtin(&dirs)
            .map(|c| c.types().map(|t| t.name.clone()).collect())
            .unwrap_or_default(),
    )
}

/// `shell`'s registration of gvm-vgpu's dynamic completion (what `COMPLETE=<shell> gvm-vgpu`
/// prints): the script calls `gvm-vgpu` back with `COMPLETE` set to complete each command
/// line, so the values above are read when the user presses Tab. Written at package build
/// time by the same version that answers it.
pub fn write_registration(
    shell: clap_complete::Shell,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    use clap_complete::env::{Bash, Elvish, EnvCompleter, Fish, Powershell, Zsh};
    let adapter: &dyn EnvCompleter = match shell {
        clap_complete::Shell::Bash => &Bash,
        clap_complete::Shell::Zsh => &Zsh,
        clap_complete::Shell::Fish => &Fish,
        clap_complete::Shell::Elvish => &Elvish,
        clap_complete::Shell::PowerShell => &Powershell,
        other => {
            return Err(std::io::Error::other(format!(
                "no dynamic completion for {other}"
            )))
        }
    };
    adapter.write_registration("COMPLETE", "gvm-vgpu", "gvm-vgpu", "gvm-vgpu", out)
}
