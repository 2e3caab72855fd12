//! The owner table of `show`: one row per owner gcgroup (process × GPU), whether the CLI
//! read GVM's files itself or asked the daemon.
//!
//! The two sources know slightly different things: GVM's `gcgroup.stat` counts ended
//! kernels, the daemon's summary does not; the daemon says by which rule it found each
//! owner, the direct read has only one rule. The table shows a column only for the source
//! that has it, so each view keeps the columns it always had. GPUs are shown as operators
//! name them, by position in PCI order and PCI address (GVM's index only for a GPU no PCI
//! parent maps to, as `gvm:16`).

use std::io::{self, Write};

use gvm_catalog::ByteSize;
use gvm_gcgroup::host_gpus::HostGpus;
use gvm_gcgroup::{GcgroupSnapshot, MemoryLimit};
use gvm_proto::OwnerInfo;

use crate::table::Table;

/// Indent of the table under the `owners (GVM gcgroups):` line of `show`.
const INDENT: &str = "    ";

/// One owner gcgroup as the table shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OwnerRow {
    pid: u32,
    /// The owner rule that tied the process to the vGPU (daemon view only).
    found_by: Option<String>,
    /// The GPU column: its position, else `gvm:<index>`.
    gpu: String,
    /// Its PCI address, `-` when unknown.
    pci: String,
    memory_limit: MemoryLimit,
    memory_current: u64,
    swap_current: u64,
    priority: u8,
    frozen: bool,
    kernels_submitted: u64,
    /// Kernels ended (direct view only).
    kernels_ended: Option<u64>,
    kernels_pending: u64,
}

/// The owner gcgroups of one vGPU, ready to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerTable {
    with_found_by: bool,
    with_kernels_ended: bool,
    rows: Vec<OwnerRow>,
}

impl OwnerTable {
    /// The table of gcgroups read from GVM's files (`show` without the daemon), their GPUs
    /// named through `gpus`.
    pub fn of_snapshots(snapshots: &[GcgroupSnapshot], gpus: &HostGpus) -> OwnerTable {
        OwnerTable {
            with_found_by: false,
            with_kernels_ended: true,
            rows: snapshots
                .iter()
                .map(|o| {
                    let named = gpus.by_gvm_index(o.gpu);
                    (o, named.map(|g| g.position), named.map(|g| g.pci.clone()))
                })
                .map(|(o, position, pci)| OwnerRow {
                    pid: o.pid,
                    found_by: None,
                    gpu: gpu_cell(position, o.gpu),
                    pci: pci.unwrap_or_else(|| "-".into()),
                    memory_limit: o.memory_limit,
                    memory_current: o.memory_current,
                    swap_current: o.swap_current,
                    priority: o.priority.get(),
                    frozen: o.frozen,
                    kernels_submitted: o.stat.submitted,
                    kernels_ended: Some(o.stat.ended),
                    kernels_pending: o.stat.pending,
                })
                .collect(),
        }
    }

    /// The table of the daemon's owners, each with the gcgroups of its GPUs.
    pub fn of_daemon_owners(owners: &[OwnerInfo]) -> OwnerTable {
        let rows = owners
            .iter()
            .flat_map(|o| {
                o.gcgroups.iter().map(move |g| OwnerRow {
                    pid: o.pid,
                    found_by: Some(format!("{:?}", o.rule).to_lowercase()),
                    gpu: gpu_cell(g.gpu, g.gvm_index),
                    pci: g.pci.clone().unwrap_or_else(|| "-".into()),
                    memory_limit: MemoryLimit::from_bytes(g.memory_limit),
                    memory_current: g.memory_current,
                    swap_current: g.swap_current,
                    priority: g.priority,
                    frozen: g.frozen,
                    kernels_submitted: g.kernels_submitted,
                    kernels_ended: None,
                    kernels_pending: g.kernels_pending,
                })
            })
            .collect();
        OwnerTable {
            with_found_by: true,
            with_kernels_ended: false,
            rows,
        }
    }

    /// Write the header and one line per gcgroup, indented under `show`'s owners line.
    pub fn write(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut header = vec![format!("{INDENT}PID")];
        if self.with_found_by {
            header.push("FOUND BY".into());
        }
        header.extend(
            [
                "GPU",
                "PCI",
                "MEM.LIMIT",
                "MEM.CURRENT",
                "SWAP",
                "PRIO",
                "FROZEN",
                "SUBMITTED",
            ]
            .map(String::from),
        );
        if self.with_kernels_ended {
            header.push("ENDED".into());
        }
        header.push("PENDING".into());
        let header: Vec<&str> = header.iter().map(String::as_str).collect();
        let mut table = Table::new(&header);
        for r in &self.rows {
            let mut cells = vec![format!("{INDENT}{}", r.pid)];
            if self.with_found_by {
                cells.push(r.found_by.clone().unwrap_or_else(|| "-".into()));
            }
            cells.extend([
                r.gpu.clone(),
                r.pci.clone(),
                limit_text(r.memory_limit),
                ByteSize(r.memory_current).to_string(),
                ByteSize(r.swap_current).to_string(),
                r.priority.to_string(),
                if r.frozen { "yes" } else { "no" }.into(),
                r.kernels_submitted.to_string(),
            ]);
            if self.with_kernels_ended {
                cells.push(
                    r.kernels_ended
                        .map_or_else(|| "-".into(), |n| n.to_string()),
                );
            }
            cells.push(r.kernels_pending.to_string());
            table.row(cells);
        }
        table.write(out)
    }
}

/// A GPU's position, or `gvm:<index>` for a GPU no PCI parent maps to.
fn gpu_cell(position: Option<u32>, gvm_index: u32) -> String {
    position.map_or_else(|| format!("gvm:{gvm_index}"), |p| p.to_string())
}

fn limit_text(limit: MemoryLimit) -> String {
    match limit {
        MemoryLimit::Unlimited => "unlimited".into(),
        MemoryLimit::Bytes(b) => ByteSize(b).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gvm_gcgroup::{KernelStat, Priority};
    use gvm_proto::{GcgroupInfo, OwnerRule};

    fn rendered(table: &OwnerTable) -> String {
        let mut buf = Vec::new();
        assert!(table.write(&mut buf).is_ok());
        String::from_utf8_lossy(&buf).into_owned()
    }

    #[test]
    fn the_direct_view_shows_ended_kernels_and_no_rule() {
        let snapshot = GcgroupSnapshot {
            pid: 4242,
            gpu: 8,
            memory_limit: MemoryLimit::Unlimited,
            memory_current: 1 << 30,
            swap_current: 0,
            priority: Priority::DEFAULT,
            frozen: true,
            stat: KernelStat {
                submitted: 30,
                ended: 20,
                pending: 10,
            },
        };
        let gpus = HostGpus::new([("0000:3b:00.0", Some(0)), ("0000:3c:00.0", Some(8))]);
        let text = rendered(&OwnerTable::of_snapshots(&[snapshot], &gpus));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let header: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(
            header,
            [
                "PID",
                "GPU",
                "PCI",
                "MEM.LIMIT",
                "MEM.CURRENT",
                "SWAP",
                "PRIO",
                "FROZEN",
                "SUBMITTED",
                "ENDED",
                "PENDING"
            ]
        );
        assert!(lines[0].starts_with("    PID  "), "{text}");
        assert!(lines[1].starts_with("    4242  "), "{text}");
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(cells[0], "4242");
        // GVM index 8 is the second GPU in PCI order.
        assert_eq!(cells[1], "1");
        assert_eq!(cells[2], "0000:3c:00.0");
        assert_eq!(cells[3], "unlimited");
        assert_eq!(cells[6], "8");
        assert_eq!(cells[7], "yes");
        assert_eq!(&cells[cells.len() - 3..], ["30", "20", "10"]);
    }

    #[test]
    fn the_daemon_view_shows_the_rule_per_gcgroup_and_no_ended_kernels() {
        let gcgroup = |gpu: Option<u32>, pci: Option<&str>, gvm_index, memory_limit| GcgroupInfo {
            gpu,
            pci: pci.map(String::from),
            gvm_index,
            memory_limit,
            memory_current: 0,
            swap_current: 0,
            priority: 2,
            frozen: false,
            kernels_submitted: 7,
            kernels_ended: 6,
            kernels_pending: 1,
        };
        let owner = OwnerInfo {
            pid: 300,
            rule: OwnerRule::Libvirt,
            gcgroups: vec![
                gcgroup(Some(0), Some("0000:3b:00.0"), 0, u64::MAX),
                gcgroup(None, None, 16, 4 << 30),
            ],
        };
        let text = rendered(&OwnerTable::of_daemon_owners(&[owner]));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "one line per gcgroup: {text}");
        assert!(lines[0].starts_with("    PID  FOUND BY  GPU"), "{text}");
        assert!(!lines[0].contains("ENDED"), "{text}");
        assert!(lines[0].ends_with("SUBMITTED  PENDING"), "{text}");
        for (line, gpu, pci, limit) in [
            (lines[1], "0", "0000:3b:00.0", "unlimited"),
            (lines[2], "gvm:16", "-", "4GiB"),
        ] {
            let cells: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(&cells[..5], ["300", "libvirt", gpu, pci, limit], "{text}");
            assert_eq!(&cells[cells.len() - 2..], ["7", "1"], "{text}");
        }
    }
}
