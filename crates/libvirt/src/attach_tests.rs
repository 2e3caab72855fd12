//! Unit tests of impact resolution (pure; placement is tested in gvm-catalog, the libvirt
//! round trips are in `tests/libvirt_real.rs`).

use super::*;

#[test]
fn no_flag_means_current_state() {
    assert_eq!(resolve_apply(false, false, true), Apply::LIVE);
    assert_eq!(resolve_apply(false, false, false), Apply::CONFIG);
    assert_eq!(resolve_apply(true, false, true), Apply::CONFIG);
    assert_eq!(resolve_apply(true, true, false), Apply::BOTH);
    assert_eq!(resolve_apply(false, true, false), Apply::LIVE);
}
