//! `GVM_VGPU_UUID`: the environment variable that ties a process to its vGPU.
//!
//! A process (QEMU, a CUDA program) started with `GVM_VGPU_UUID=<uuid>` belongs to that vGPU.
//! The shim reads it from its own environment ([`crate::config`]); the daemon and the CLI read
//! it from another process's `/proc/<pid>/environ` ([`vgpu_uuid_in_environ`]); the simulator
//! sets it on the owner processes it starts. This module is the one place that names it.

/// The environment variable that names the vGPU a process belongs to.
pub const VGPU_UUID_ENV: &str = "GVM_VGPU_UUID";

/// The value of [`VGPU_UUID_ENV`] in an environment block as `/proc/<pid>/environ` holds it
/// (`KEY=VALUE` entries, each ended by a NUL), with surrounding ASCII whitespace trimmed.
///
/// The first entry of the name wins, as for `getenv(3)` in the process itself. `None` when the
/// variable is not set or its value is not UTF-8. The value is not checked to be a UUID: each
/// caller parses it with its own UUID type.
pub fn vgpu_uuid_in_environ(environ: &[u8]) -> Option<&str> {
    let value = environ.split(|b| *b == 0).find_map(|entry| {
        entry
            .strip_prefix(VGPU_UUID_ENV.as_bytes())?
            .strip_prefix(b"=")
    })?;
    std::str::from_utf8(value.trim_ascii()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: &str = "2b2f7d5a-2d4e-4f6c-8a1b-0c9d8e7f6a5b";

    #[test]
    fn the_name_is_the_one_every_tool_documents() {
        assert_eq!(VGPU_UUID_ENV, "GVM_VGPU_UUID");
    }

    #[test]
    fn finds_the_value_among_other_entries_and_trims_it() {
        let block = format!("PATH=/bin\0GVM_VGPU_UUID= {U}\n\0HOME=/\0");
        assert_eq!(vgpu_uuid_in_environ(block.as_bytes()), Some(U));
        // The last entry may lack its NUL (a truncated read).
        let block = format!("A=B\0GVM_VGPU_UUID={U}");
        assert_eq!(vgpu_uuid_in_environ(block.as_bytes()), Some(U));
    }

    #[test]
    fn only_the_exact_name_at_the_start_of_an_entry_counts() {
        assert_eq!(vgpu_uuid_in_environ(b"GVM_VGPU_UUIDX=1\0A=B\0"), None);
        assert_eq!(vgpu_uuid_in_environ(b"X_GVM_VGPU_UUID=1\0"), None);
        assert_eq!(vgpu_uuid_in_environ(b"GVM_VGPU_UUID\0"), None);
        assert_eq!(vgpu_uuid_in_environ(b""), None);
    }

    #[test]
    fn the_first_entry_wins_and_its_value_is_not_validated() {
        let block = format!("GVM_VGPU_UUID=not-a-uuid\0GVM_VGPU_UUID={U}\0");
        assert_eq!(vgpu_uuid_in_environ(block.as_bytes()), Some("not-a-uuid"));
        assert_eq!(vgpu_uuid_in_environ(b"GVM_VGPU_UUID=\xff\0"), None);
    }
}
