//! What each SR-IOV GPU can still take, per VF vGPU type: pure, over one read of the PFs
//! and the manager's records.
//!
//! The ABI says only whether one more vGPU of a type fits on a VF (its
//! `creatable_vgpu_types`), not how many: so a type's `creatable` count is the free VFs
//! that list it, an upper bound that each new vGPU may lower (homogeneous mode, placements).
//! A VF is free when it carries no vGPU and no record reserves it (a record whose vGPU is
//! not live now, e.g. after a reboot, keeps its VF for the restore).

use std::collections::BTreeMap;

use gvm_vf::{Assignment, Pf};

use crate::model::VfTypeOffer;

/// The offers of `pfs`, sorted by PF then type ID, given the manager's `records`.
pub fn vf_offers(pfs: &[Pf], records: &[Assignment]) -> Vec<VfTypeOffer> {
    let mut out = Vec::new();
    for pf in pfs {
        let mut by_id: BTreeMap<u32, VfTypeOffer> = BTreeMap::new();
        for vf in &pf.vfs {
            let Some(state) = &vf.state else { continue };
            let record = records.iter().find(|r| r.vf == vf.address);
            if state.current == 0 {
                for t in &state.creatable {
                    let offer = entry(&mut by_id, &pf.address, t.id, &t.name);
                    if record.is_none() {
                        offer.creatable += 1;
                    }
                }
                continue;
            }
            match record.filter(|r| r.type_id == state.current) {
                Some(r) => entry(&mut by_id, &pf.address, r.type_id, &r.type_name)
                    .vgpus
                    .push(r.uuid),
                None => {
                    let name = records
                        .iter()
                        .find(|r| r.type_id == state.current)
                        .map_or_else(
                            || format!("type {}", state.current),
                            |r| r.type_name.clone(),
                        );
                    entry(&mut by_id, &pf.address, state.current, &name)
                        .unrecorded
                        .push(vf.address.clone());
                }
            }
        }
        out.extend(by_id.into_values());
    }
    out
}

/// The offer of type `id` in `by_id`, made empty on first use.
fn entry<'a>(
    by_id: &'a mut BTreeMap<u32, VfTypeOffer>,
    pf: &str,
    id: u32,
    name: &str,
) -> &'a mut VfTypeOffer {
    by_id.entry(id).or_insert_with(|| VfTypeOffer {
        pf: pf.to_string(),
        type_id: id,
        name: name.to_string(),
        creatable: 0,
        vgpus: Vec::new(),
        unrecorded: Vec::new(),
    })
}

#[cfg(test)]
#[path = "offers_tests.rs"]
mod tests;
