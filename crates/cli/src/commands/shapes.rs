//! The `--json` object shapes: one shape per kind of object, whichever command prints it
//! and whether gvm-vgpud or the CLI itself read the host (docs/cli-json.md).
//!
//! Every output is `{"schema": N, "<member>": ...}` ([`write_json`]), `N` being
//! [`gvm_proto::JSON_SCHEMA`]. A vGPU is the daemon's [`VgpuInfo`] (`list`, `start`,
//! `stop`, `freeze`, `thaw`, `create`); `show` and `set` add the detail fields of
//! [`VgpuDetail`] beside them ([`VgpuJson`]), its owner gcgroups under `owner_details`
//! (`owners` stays the owner pids, as in `list`). A definition is [`gvm_proto::Definition`],
//! a gcgroup [`gvm_proto::GcgroupInfo`], a GPU the `gpu`, `pci`, `gvm_index` members.

use std::io::Write;

use anyhow::Result;
use gvm_proto::{
    Definition, GuestEnforcement, Overrides, OwnerInfo, RefusedClaim, Sources, VgpuDetail, VgpuInfo,
};
use serde::ser::SerializeMap;
use serde::Serialize;

/// `{"schema": N, member: value}`, `schema` first.
struct Envelope<'a, T: ?Sized> {
    member: &'a str,
    value: &'a T,
}

impl<T: Serialize + ?Sized> Serialize for Envelope<'_, T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(2))?;
        map.serialize_entry("schema", &gvm_proto::JSON_SCHEMA)?;
        map.serialize_entry(self.member, self.value)?;
        map.end()
    }
}

/// Write `{"schema": N, member: value}` as pretty JSON followed by a newline: the one
/// object a `--json` command prints.
pub fn write_json<T: Serialize + ?Sized>(
    out: &mut dyn Write,
    member: &str,
    value: &T,
) -> Result<()> {
    serde_json::to_writer_pretty(&mut *out, &Envelope { member, value })?;
    writeln!(out)?;
    Ok(())
}

/// A vGPU with `show`'s detail: the [`VgpuInfo`] members, then the detail's.
#[derive(Debug, Serialize)]
pub struct VgpuJson<'a> {
    /// What `list` shows of it.
    #[serde(flatten)]
    pub info: &'a VgpuInfo,
    /// What `show` adds.
    #[serde(flatten)]
    pub detail: DetailJson<'a>,
}

/// The members `show` adds to a vGPU.
#[derive(Debug, Serialize)]
pub struct DetailJson<'a> {
    /// Where each knob came from.
    pub sources: &'a Sources,
    /// The stored definition, if any.
    pub definition: Option<&'a Definition>,
    /// Live overrides in force.
    pub live_overrides: &'a Overrides,
    /// Owner processes with their gcgroups.
    pub owner_details: &'a [OwnerInfo],
    /// Processes whose claim was refused.
    pub refused_claims: &'a [RefusedClaim],
    /// The guest agent's side, when the vGPU has a channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest: Option<&'a GuestEnforcement>,
    /// What holds the VM, when the hard fallback does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_by: Option<&'a str>,
    /// Framebuffer use NVML reports for the vGPU, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nvidia_fb_usage_bytes: Option<u64>,
    /// The kernel device, when the CLI read it itself (no daemon).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<&'a DeviceJson>,
}

/// The kernel device of a vGPU the CLI read itself.
#[derive(Debug, Serialize)]
pub struct DeviceJson {
    /// IOMMU group number, if the kernel made one.
    pub iommu_group: Option<u32>,
    /// sysfs path of the device.
    pub sysfs_path: String,
}

impl<'a> VgpuJson<'a> {
    /// The shape of `d`, with the kernel device when the CLI read it itself.
    pub fn of(d: &'a VgpuDetail, device: Option<&'a DeviceJson>) -> VgpuJson<'a> {
        VgpuJson {
            info: &d.info,
            detail: DetailJson {
                sources: &d.sources,
                definition: d.definition.as_ref(),
                live_overrides: &d.live_overrides,
                owner_details: &d.owners,
                refused_claims: &d.refused_claims,
                guest: d.guest.as_ref(),
                held_by: d.held_by.as_deref(),
                nvidia_fb_usage_bytes: d.nvidia_fb_usage_bytes,
                device,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_output_is_schema_first_then_one_member() -> Result<()> {
        let mut out = Vec::new();
        write_json(&mut out, "removed", "x")?;
        let text = String::from_utf8(out)?;
        assert_eq!(
            text,
            format!(
                "{{\n  \"schema\": {},\n  \"removed\": \"x\"\n}}\n",
                gvm_proto::JSON_SCHEMA
            )
        );
        Ok(())
    }
}
