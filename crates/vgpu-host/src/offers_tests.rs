//! Tests of [`vf_offers`] on hand-built PFs.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use gvm_vf::{Assignment, Pf, Uuid, Vf, VfState, VgpuType};

use super::*;

fn t(id: u32, name: &str) -> VgpuType {
    VgpuType {
        id,
        name: name.into(),
    }
}

fn vf(index: u32, current: u32, creatable: Vec<VgpuType>) -> Vf {
    Vf {
        index,
        address: format!("0000:41:00.{}", index + 4),
        state: Some(VfState {
            current,
            creatable,
            placement_id: None,
            gpu_instance_id: None,
        }),
    }
}

fn record(uuid: Uuid, vf: &str, type_id: u32, name: &str) -> Assignment {
    Assignment {
        uuid,
        pf: "0000:41:00.0".into(),
        vf: vf.into(),
        type_id,
        type_name: name.into(),
    }
}

#[test]
fn counts_free_vfs_live_vgpus_and_vfs_without_a_record() {
    let u20 = Uuid::new_v4();
    let stale = Uuid::new_v4();
    let pf = Pf {
        address: "0000:41:00.0".into(),
        num_vfs: 4,
        total_vfs: Some(20),
        vfs: vec![
            // a live 20C on record
            vf(0, 1047, vec![]),
            // a 20C set by another tool
            vf(1, 1047, vec![]),
            // free, reserved by a record whose vGPU is not live (after a reboot)
            vf(2, 0, vec![t(1047, "NVIDIA H100-20C")]),
            // free
            vf(3, 0, vec![t(1047, "NVIDIA H100-20C")]),
        ],
    };
    let records = [
        record(u20, "0000:41:00.4", 1047, "NVIDIA H100-20C"),
        record(stale, "0000:41:00.6", 1048, "NVIDIA H100-40C"),
    ];
    let offers = vf_offers(&[pf], &records);
    assert_eq!(offers.len(), 1);
    let o = &offers[0];
    assert_eq!(
        (o.type_id, o.name.as_str(), o.creatable),
        (1047, "NVIDIA H100-20C", 1)
    );
    assert_eq!(o.vgpus, [u20]);
    assert_eq!(o.unrecorded, ["0000:41:00.5"]);
}

#[test]
fn a_pf_without_vfs_offers_nothing() {
    let pf = Pf {
        address: "0000:42:00.0".into(),
        num_vfs: 0,
        total_vfs: Some(20),
        vfs: vec![],
    };
    assert!(vf_offers(&[pf], &[]).is_empty());
}
