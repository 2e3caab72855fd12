//! Tests of the VF restore planner.

use super::*;

const PF: &str = "0000:41:00.0";

fn want(n: u128, pf: &str, name: &str, gib: u64) -> VfToRestore {
    VfToRestore {
        uuid: Uuid::from_u128(n),
        pf: pf.into(),
        kernel_name: name.into(),
        memory: gib << 30,
    }
}

fn pf(num_vfs: u32) -> PfInfo {
    PfInfo {
        address: PF.into(),
        num_vfs,
        total_vfs: Some(20),
        creatable: Vec::new(),
    }
}

#[test]
fn enables_vfs_and_creates_largest_first() {
    let wanted = [
        want(1, PF, "NVIDIA H100-20C", 20),
        want(2, PF, "NVIDIA H100-40C", 40),
        want(3, PF, "NVIDIA H100-20C", 20),
    ];
    let p = plan_restore(&wanted, &[pf(0)], &BTreeMap::new());
    assert_eq!(p.enable, [(PF.to_string(), 20)]);
    let order: Vec<u128> = p.create.iter().map(|w| w.uuid.as_u128()).collect();
    assert_eq!(order, [2, 1, 3]);
    assert!(p.mixed.contains(PF));
    assert!(p.refused.is_empty());
}

#[test]
fn one_size_with_vfs_enabled_is_neither_mixed_nor_enabled_again() {
    let wanted = [want(1, PF, "NVIDIA H100-20C", 20)];
    let live = BTreeMap::from([(
        PF.to_string(),
        BTreeSet::from(["NVIDIA H100-20C".to_string()]),
    )]);
    let p = plan_restore(&wanted, &[pf(4)], &live);
    assert!(p.enable.is_empty());
    assert!(p.mixed.is_empty());
    assert_eq!(p.create.len(), 1);
    // A live vGPU of another size makes it mixed.
    let live = BTreeMap::from([(
        PF.to_string(),
        BTreeSet::from(["NVIDIA H100-40C".to_string()]),
    )]);
    assert!(plan_restore(&wanted, &[pf(4)], &live).mixed.contains(PF));
}

#[test]
fn a_missing_pf_refuses_its_vgpus_by_uuid() {
    let wanted = [
        want(1, "0000:99:00.0", "NVIDIA H100-20C", 20),
        want(2, PF, "NVIDIA H100-20C", 20),
    ];
    let p = plan_restore(&wanted, &[pf(0)], &BTreeMap::new());
    assert_eq!(p.refused.len(), 1);
    assert_eq!(p.refused[0].0, Uuid::from_u128(1));
    assert!(
        p.refused[0].1.contains("0000:99:00.0"),
        "{}",
        p.refused[0].1
    );
    assert_eq!(p.create.len(), 1);
    let told = mixed_sizes_message(PF, "NVIDIA H100-20C", true, "without NVML: not found");
    assert!(
        told.contains("NVML") && told.contains("cleared") && told.contains("not found"),
        "{told}"
    );
    assert!(!mixed_sizes_message(PF, "NVIDIA H100-20C", false, "x").contains("cleared"));
}
