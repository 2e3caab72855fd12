//! Memory limits checked against the card: a `set` or `define` that asks for more GPU memory
//! than the framebuffer of the vGPU type's GPU model is refused unless the request says
//! `force`.
//!
//! GVM's `memory.limit` caps what one process may keep resident on the GPU; a limit above
//! the card's framebuffer can never bind, so it is almost always a typo (`800G` for `80G`)
//! or a limit meant for another card. The catalog's `[gpu] framebuffer` (crates/catalog) is
//! the card's size; types whose model gives none are not checked, and neither is
//! `unlimited`. Pure: the handlers look the framebuffer up through
//! [`crate::ports::TypePort::framebuffer`] and call [`check_memory_limit`] before they write.

use gvm_catalog::ByteSize;
use gvm_proto::{ApiError, UNLIMITED};

/// The framebuffer of the GPU model a catalog type belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framebuffer {
    /// The catalog's GPU model (`H100-80GB`).
    pub model: String,
    /// Its framebuffer in bytes.
    pub bytes: u64,
}

/// Refuses `limit` (bytes) for a vGPU of catalog type `type_name` when it is above `fb`,
/// unless `force`. `vgpu` names the vGPU in the message (a UUID, or "the definition").
pub fn check_memory_limit(
    vgpu: &str,
    type_name: &str,
    limit: Option<u64>,
    fb: Option<&Framebuffer>,
    force: bool,
) -> Result<(), ApiError> {
    let (Some(limit), Some(fb)) = (limit, fb) else {
        return Ok(());
    };
    if force || limit == UNLIMITED || limit <= fb.bytes {
        return Ok(());
    }
    Err(ApiError::invalid(format!(
        "memory limit {} for {vgpu} is above the {} framebuffer of its GPU ({}, type \
         {type_name}): such a limit never binds; pass --force (`force` in the API) if this \
         is intended",
        ByteSize(limit),
        ByteSize(fb.bytes),
        fb.model
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fb() -> Framebuffer {
        Framebuffer {
            model: "GVM-SIM-80GB".into(),
            bytes: 80 << 30,
        }
    }

    #[test]
    fn a_limit_above_the_framebuffer_is_refused_naming_both_sizes_and_force() {
        let e = check_memory_limit("vGPU x", "sim-20c", Some(81 << 30), Some(&fb()), false);
        let Err(e) = e else {
            panic!("81GiB on an 80GiB card was accepted");
        };
        assert_eq!(e.code, gvm_proto::ErrorCode::InvalidArgument);
        for part in [
            "81GiB",
            "80GiB",
            "GVM-SIM-80GB",
            "sim-20c",
            "--force",
            "vGPU x",
        ] {
            assert!(e.message.contains(part), "{part}: {}", e.message);
        }
    }

    #[test]
    fn force_unlimited_a_fitting_limit_and_an_unknown_framebuffer_pass() {
        let f = fb();
        assert!(check_memory_limit("v", "t", Some(81 << 30), Some(&f), true).is_ok());
        assert!(check_memory_limit("v", "t", Some(UNLIMITED), Some(&f), false).is_ok());
        assert!(check_memory_limit("v", "t", Some(80 << 30), Some(&f), false).is_ok());
        assert!(check_memory_limit("v", "t", Some(81 << 30), None, false).is_ok());
        assert!(check_memory_limit("v", "t", None, Some(&f), false).is_ok());
    }
}
