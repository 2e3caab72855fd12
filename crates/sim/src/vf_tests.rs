//! Unit tests of the SR-IOV GPU model: `sriov_numvfs`, creatable lists, modes, placements, holds.

use super::*;

const PF: &str = "0000:41:00.0";
const H20C: u32 = 1047;
const H40C: u32 = 1048;
const H80C: u32 = 1049;
const H4C: u32 = 1042;

fn errno<T: std::fmt::Debug>(r: Result<T, FsError>) -> i32 {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.errno(),
    }
}

/// One GPU with `vfs` VFs enabled.
fn gpus(vfs: u16) -> SriovGpus {
    let mut s = SriovGpus::new(1);
    s.set_num_vfs("n", 0, vfs.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    s
}

fn set(s: &mut SriovGpus, vf: usize, id: u32) -> Result<(), FsError> {
    s.set_type("t", 0, vf, format!("{id}\n").as_bytes())
}

fn creatable_ids(s: &SriovGpus, vf: usize) -> Vec<u32> {
    s.gpus()[0].creatable(vf).iter().map(|t| t.id).collect()
}

#[test]
fn pfs_and_vfs_have_consecutive_addresses() {
    let mut s = SriovGpus::new(2);
    assert_eq!(s.gpus()[1].address(), "0000:42:00.0");
    assert_eq!(s.pf("0000:42:00.0"), Some(1));
    assert_eq!(s.vf("0000:41:00.4"), None, "no VF before sriov_numvfs");
    s.set_num_vfs("n", 0, b"20\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let g = &s.gpus()[0];
    assert_eq!(g.vf_address(0), "0000:41:00.4");
    assert_eq!(g.vf_address(4), "0000:41:01.0");
    assert_eq!(g.vf_address(19), "0000:41:02.7");
    assert_eq!(s.vf("0000:41:01.0"), Some((0, 4)));
    assert_eq!(s.vf("0000:41:02.7"), Some((0, 19)));
    assert_eq!(s.vf("0000:41:03.0"), None, "beyond sriov_numvfs");
    assert_eq!(s.vf("0000:42:00.4"), None, "the other GPU has no VFs");
    assert_eq!(s.vf(PF), None, "a PF is not a VF");
    assert_eq!(s.vf("0000:41:0A.0"), None, "sysfs names are lower case");
}

#[test]
fn sriov_numvfs_follows_the_pci_core() {
    let mut s = SriovGpus::new(1);
    for bad in ["", "x", "-1", "70000", "4\n\n"] {
        assert_eq!(
            errno(s.set_num_vfs("n", 0, bad.as_bytes())),
            libc::EINVAL,
            "{bad:?}"
        );
    }
    assert_eq!(errno(s.set_num_vfs("n", 0, b"21")), libc::ERANGE);
    // kstrtou16 with base 0: hex is a count too.
    s.set_num_vfs("n", 0, b"0x4\n")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.gpus()[0].vfs.len(), 4);
    s.set_num_vfs("n", 0, b"4")
        .unwrap_or_else(|e| panic!("the same count: {e}"));
    assert_eq!(errno(s.set_num_vfs("n", 0, b"8")), libc::EBUSY);
    assert_eq!(s.gpus()[0].vfs.len(), 4, "a refused store changes nothing");
    s.set_num_vfs("n", 0, b"0")
        .unwrap_or_else(|e| panic!("{e}"));
    s.set_num_vfs("n", 0, b"8")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.gpus()[0].vfs.len(), 8);
}

#[test]
fn vfs_with_vgpus_cannot_be_disabled() {
    let mut s = gpus(2);
    set(&mut s, 1, H20C).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(errno(s.set_num_vfs("n", 0, b"0")), libc::EBUSY);
    assert_eq!(s.current_type(0, 1), H20C);
    set(&mut s, 1, 0).unwrap_or_else(|e| panic!("{e}"));
    s.set_num_vfs("n", 0, b"0")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(s.gpus()[0].vfs.is_empty());
}

#[test]
fn an_empty_gpu_offers_every_type_and_a_typed_vf_none() {
    let mut s = gpus(4);
    assert_eq!(creatable_ids(&s, 0), (1042..=1049).collect::<Vec<_>>());
    assert_eq!(
        s.creatable_text(0, 0).lines().nth(5),
        Some("    1047 : NVIDIA H100-20C")
    );
    set(&mut s, 0, H20C).unwrap_or_else(|e| panic!("{e}"));
    assert!(creatable_ids(&s, 0).is_empty());
    assert_eq!(s.creatable_text(0, 0), "");
    assert_eq!(s.creatable_text(0, 9), "", "a VF that is not enabled");
}

#[test]
fn homogeneous_mode_offers_only_the_running_size_while_room_remains() {
    let mut s = gpus(5);
    set(&mut s, 0, H20C).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(creatable_ids(&s, 1), [H20C]);
    // Another size is refused, naming what is creatable, and nothing changes.
    let e = set(&mut s, 1, H40C).unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL);
    assert!(e.to_string().contains("1047 (NVIDIA H100-20C)"), "{e}");
    assert_eq!(s.current_type(0, 1), 0);
    for vf in 1..4 {
        set(&mut s, vf, H20C).unwrap_or_else(|e| panic!("VF {vf}: {e}"));
    }
    // 4 x 20 GiB fill the 80 GiB: the fifth VF offers nothing.
    assert!(creatable_ids(&s, 4).is_empty());
    assert_eq!(errno(set(&mut s, 4, H20C)), libc::EINVAL);
    let placements: Vec<u32> = s.gpus()[0]
        .vfs
        .iter()
        .filter_map(|v| v.vgpu.map(|g| g.placement))
        .collect();
    assert_eq!(placements, [0, 20, 40, 60]);
    // Removing all of them frees every size again.
    for vf in 0..4 {
        set(&mut s, vf, 0).unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(creatable_ids(&s, 4).len(), H100_TYPES.len());
}

#[test]
fn heterogeneous_mode_mixes_sizes_at_placements() {
    let mut s = gpus(6);
    s.set_heterogeneous(PF, true)
        .unwrap_or_else(|e| panic!("{e}"));
    set(&mut s, 0, H40C).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.placement_text(0, 0), "0\n");
    // 40 GiB left: every size but 80C.
    let ids = creatable_ids(&s, 1);
    assert!(ids.contains(&H20C) && ids.contains(&H4C), "{ids:?}");
    assert!(!ids.contains(&H80C), "{ids:?}");
    // A placement written first is where the vGPU goes.
    s.set_placement("p", 0, 1, b"60\n")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.placement_text(0, 1), "60\n");
    set(&mut s, 1, H20C).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.gpus()[0].vfs[1].vgpu.map(|g| g.placement), Some(60));
    // A placement the type does not fit (unaligned, or taken) fails the type write.
    s.set_placement("p", 0, 2, b"50")
        .unwrap_or_else(|e| panic!("{e}"));
    let e = set(&mut s, 2, H20C).unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL);
    assert!(e.to_string().contains("free placements: 40"), "{e}");
    assert_eq!(s.current_type(0, 2), 0);
    s.set_placement("p", 0, 2, b"0")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        errno(set(&mut s, 2, H4C)),
        libc::EINVAL,
        "slot 0 is the 40C's"
    );
    assert_eq!(errno(s.set_placement("p", 0, 2, b"80")), libc::EINVAL);
    assert_eq!(errno(s.set_placement("p", 0, 2, b"x")), libc::EINVAL);
    s.set_placement("p", 0, 2, b"44")
        .unwrap_or_else(|e| panic!("{e}"));
    set(&mut s, 2, H4C).unwrap_or_else(|e| panic!("{e}"));
    // Slots 40..44 stay free: a 4C fits there, a 20C no longer does anywhere.
    assert_eq!(s.gpus()[0].free_placements(&H100_TYPES[0])[0], 40);
    assert!(!creatable_ids(&s, 3).contains(&H20C));
    assert_eq!(errno(s.set_placement("p", 0, 2, b"40")), libc::EBUSY);
}

#[test]
fn heterogeneous_mode_needs_enabled_vfs_without_vgpus_and_reenabling_clears_it() {
    let mut s = SriovGpus::new(1);
    assert_eq!(errno(s.set_heterogeneous(PF, true)), libc::EINVAL);
    assert_eq!(
        errno(s.set_heterogeneous("0000:99:00.0", true)),
        libc::ENOENT
    );
    s.set_num_vfs("n", 0, b"2")
        .unwrap_or_else(|e| panic!("{e}"));
    set(&mut s, 0, H20C).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(errno(s.set_heterogeneous(PF, true)), libc::EBUSY);
    set(&mut s, 0, 0).unwrap_or_else(|e| panic!("{e}"));
    s.set_heterogeneous(PF, true)
        .unwrap_or_else(|e| panic!("{e}"));
    s.set_num_vfs("n", 0, b"0")
        .unwrap_or_else(|e| panic!("{e}"));
    s.set_num_vfs("n", 0, b"2")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!s.gpus()[0].heterogeneous);
    set(&mut s, 0, H20C).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(creatable_ids(&s, 1), [H20C], "homogeneous again");
}

#[test]
fn current_vgpu_type_refuses_malformed_input_and_a_second_type() {
    let mut s = gpus(1);
    for bad in ["", "abc", "-3", "1047 ", "1047\n\n", "0x417"] {
        assert_eq!(
            errno(s.set_type("t", 0, 0, bad.as_bytes())),
            libc::EINVAL,
            "{bad:?}"
        );
    }
    assert_eq!(errno(s.set_type("t", 0, 0, b"99999999999")), libc::ERANGE);
    assert_eq!(errno(set(&mut s, 0, 7)), libc::EINVAL, "an unknown ID");
    s.set_type("t", 0, 0, b"+1047\n")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(errno(set(&mut s, 0, H20C)), libc::EBUSY, "already typed");
    set(&mut s, 0, 0).unwrap_or_else(|e| panic!("{e}"));
    set(&mut s, 0, 0).unwrap_or_else(|e| panic!("removing nothing: {e}"));
}

#[test]
fn a_held_vf_keeps_its_vgpu() {
    let mut s = gpus(2);
    assert_eq!(errno(s.hold("0000:41:00.4")), libc::EINVAL, "no vGPU yet");
    set(&mut s, 0, H20C).unwrap_or_else(|e| panic!("{e}"));
    s.set_params("v", 0, 0, b"frame_rate_limiter=0\n")
        .unwrap_or_else(|e| panic!("{e}"));
    s.hold("0000:41:00.4").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(errno(s.hold("0000:41:00.4")), libc::EBUSY);
    assert_eq!(errno(set(&mut s, 0, 0)), libc::EPERM);
    assert_eq!(errno(set(&mut s, 0, H20C)), libc::EBUSY);
    assert_eq!(errno(s.set_params("v", 0, 0, b"x")), libc::EBUSY);
    assert_eq!(errno(s.set_num_vfs("n", 0, b"0")), libc::EBUSY);
    assert_eq!(s.current_type(0, 0), H20C);
    assert_eq!(s.params_text(0, 0), "frame_rate_limiter=0\n");
    s.release("0000:41:00.4").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(errno(s.release("0000:41:00.4")), libc::EINVAL);
    set(&mut s, 0, 0).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.params_text(0, 0), "\n", "params go with the vGPU");
    assert_eq!(errno(s.set_params("v", 0, 0, b"x")), libc::EINVAL);
    assert_eq!(errno(s.hold("0000:41:00.6")), libc::ENOENT);
}

#[test]
fn reset_wipes_vfs_vgpus_holds_and_modes() {
    let mut s = SriovGpus::new(2);
    for g in 0..2 {
        s.set_num_vfs("n", g, b"3")
            .unwrap_or_else(|e| panic!("{e}"));
    }
    s.set_heterogeneous("0000:42:00.0", true)
        .unwrap_or_else(|e| panic!("{e}"));
    set(&mut s, 0, H20C).unwrap_or_else(|e| panic!("{e}"));
    s.hold("0000:41:00.4").unwrap_or_else(|e| panic!("{e}"));
    s.reset();
    assert_eq!(s, SriovGpus::new(2));
    assert_eq!(s.vf("0000:41:00.4"), None);
}
