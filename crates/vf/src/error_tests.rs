//! Tests of the errno mapping: every errno names the VF and the fix and is kept.

use super::*;

const VF: &str = "0000:41:00.4";

fn map(errno: i32) -> Error {
    map_type_write_error(
        io::Error::from_raw_os_error(errno),
        VF,
        Path::new("/sys/bus/pci/devices/0000:41:00.4/nvidia/current_vgpu_type"),
        b"1047\n",
    )
}

#[test]
fn einval_is_a_rejected_id_pointing_at_types() {
    let e = map(libc::EINVAL);
    assert!(matches!(e, Error::Rejected { ref written, .. } if written == "1047"));
    assert_eq!(e.errno(), Some(libc::EINVAL));
    let msg = e.to_string();
    assert!(msg.contains(VF) && msg.contains("gvm-vgpu types"), "{msg}");
}

#[test]
fn ebusy_and_eperm_say_stop_the_vm() {
    for errno in [libc::EBUSY, libc::EPERM] {
        let e = map(errno);
        assert_eq!(e.errno(), Some(errno));
        let msg = e.to_string();
        assert!(msg.contains(VF) && msg.contains("stop the VM"), "{msg}");
    }
}

#[test]
fn a_vanished_vf_says_enable_the_vfs() {
    for errno in [libc::ENOENT, libc::ENODEV] {
        let e = map(errno);
        assert!(matches!(e, Error::VfGone { .. }));
        assert!(e.to_string().contains("enable the VFs"), "{e}");
    }
}

#[test]
fn eacces_and_others_keep_the_errno() {
    assert!(map(libc::EACCES).to_string().contains("run as root"));
    let e = map(libc::EIO);
    assert!(matches!(e, Error::Write { .. }));
    assert_eq!(e.errno(), Some(libc::EIO));
}
