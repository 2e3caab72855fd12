//! Owner processes of a vGPU, found the simplest way: `GVM_VGPU_UUID=<uuid>` in a GVM-registered
//! process's environment. The daemon applies the full set of owner rules; the CLI uses this one
//! only to show knobs when it reads the host directly.

use std::collections::BTreeMap;

use gvm_gcgroup::GcgroupSnapshot;
use uuid::Uuid;

use crate::context::Context;

/// The environment variable that ties a process to a vGPU.
pub const VGPU_UUID_ENV: &str = "GVM_VGPU_UUID";

/// The vGPU UUID named in a process's environment, if any.
pub fn vgpu_of_process(ctx: &Context, pid: u32) -> Option<Uuid> {
    let environ = std::fs::read(ctx.host.proc_dir().join(pid.to_string()).join("environ")).ok()?;
    environ.split(|b| *b == 0).find_map(|entry| {
        let text = std::str::from_utf8(entry).ok()?;
        let value = text.strip_prefix(VGPU_UUID_ENV)?.strip_prefix('=')?;
        Uuid::parse_str(value.trim()).ok()
    })
}

/// Every GVM-registered process tied to a vGPU, with its gcgroup snapshots, by UUID.
/// A missing GVM tree yields an empty map; processes that vanish mid-scan are skipped.
pub fn owners_by_vgpu(ctx: &Context) -> BTreeMap<Uuid, Vec<GcgroupSnapshot>> {
    let mut map: BTreeMap<Uuid, Vec<GcgroupSnapshot>> = BTreeMap::new();
    let Ok(pids) = ctx.gvm.processes() else {
        return map;
    };
    for pid in pids {
        let Some(uuid) = vgpu_of_process(ctx, pid) else {
            continue;
        };
        let Ok(gpus) = ctx.gvm.gpus(pid) else {
            continue;
        };
        for gpu in gpus {
            if let Ok(snapshot) = ctx.gvm.gcgroup(pid, gpu).snapshot() {
                map.entry(uuid).or_default().push(snapshot);
            }
        }
    }
    map
}
