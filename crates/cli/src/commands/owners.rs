//! Owner processes of a vGPU, found the simplest way: `GVM_VGPU_UUID=<uuid>` in a GVM-registered
//! process's environment. The daemon applies the full set of owner rules; the CLI uses this one
//! only to show knobs when it reads the host directly.

use std::collections::BTreeMap;

use gvm_gcgroup::GcgroupSnapshot;
use gvm_shim_abi::vgpu_env::vgpu_uuid_in_environ;
use uuid::Uuid;

use crate::context::Context;

/// The vGPU UUID named in a process's environment, if any.
pub fn vgpu_of_process(ctx: &Context, pid: u32) -> Option<Uuid> {
    let environ = std::fs::read(ctx.host.proc_dir().join(pid.to_string()).join("environ")).ok()?;
    Uuid::try_parse(vgpu_uuid_in_environ(&environ)?).ok()
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
