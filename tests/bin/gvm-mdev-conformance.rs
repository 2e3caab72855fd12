//! `gvm-mdev-conformance`: run the mdev conformance scenario through gvm-mdev and print JSON lines.
//!
//! The same binary runs inside the test guest against the real kernel (`--root /`,
//! hooks `rmmod mtty` / `insmod /modules/mtty.ko`) and on the host against the
//! simulated host's mount (`--root DIR`). Each line on standard output is one
//! `StepRecord` (`tests/guest/conformance/record.rs`); the test compares the two runs line by line. The unload/load
//! steps run `sh -c <cmd>` and are recorded as skipped when no command is given.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use clap::Parser;
use gvm_error_chain::error_chain;
use gvm_host_root::HostRoot;
use gvm_mdev::{MdevHost, Uuid};
use gvm_vgpu_e2e::guest::conformance::held::{
    run_held_remove, sysfs_facts, HeldOutcome, HeldPlan, Holder, Seen,
};
use gvm_vgpu_e2e::guest::conformance::{
    execute, mtty_scenario, sys, DeviceState, Hook, MdevOps, OpError, State, TypeState,
};

/// Run the scripted mdev scenario (create, duplicates, malformed and 36/37/38-byte
/// UUIDs, pool exhaustion, remove 0/1/garbage, parent unload/reload) through the
/// gvm-mdev client and print one JSON line per step.
#[derive(Debug, Parser)]
#[command(name = "gvm-mdev-conformance", version)]
struct Args {
    /// Host root (/ on a real kernel, the simulated host's mount otherwise).
    #[arg(long, value_name = "DIR", default_value = "/")]
    root: PathBuf,
    /// The mdev parent to exercise.
    #[arg(long, default_value = "mtty")]
    parent: String,
    /// The first type (default: the parent's first type id in sorted order).
    #[arg(long)]
    type_a: Option<String>,
    /// The second type, sharing the first one's pool (default: the second type id).
    #[arg(long)]
    type_b: Option<String>,
    /// Shell command that unregisters the parent (e.g. `rmmod mtty`); the step is skipped without it.
    #[arg(long, value_name = "CMD")]
    unload_cmd: Option<String>,
    /// Shell command that registers it again (e.g. `insmod /modules/mtty.ko`).
    #[arg(long, value_name = "CMD")]
    load_cmd: Option<String>,
    /// Hold devices through the simulated host's control file (`spawn <uuid>` starts an
    /// owner, `kill <pid>` ends it) instead of opening them through VFIO (`/dev/vfio`).
    #[arg(long, value_name = "FILE")]
    sim_control: Option<PathBuf>,
}

/// [`MdevOps`] through the project's client.
struct Client {
    host: MdevHost,
    root: PathBuf,
    sim_control: Option<PathBuf>,
    unload_cmd: Option<String>,
    load_cmd: Option<String>,
}

fn op_error(e: &gvm_mdev::Error) -> OpError {
    OpError {
        errno: e.errno(),
        message: error_chain(e),
    }
}

impl MdevOps for Client {
    fn state(&mut self) -> Result<State, OpError> {
        let parents = self.host.parents().map_err(|e| op_error(&e))?;
        let devices = self.host.devices().map_err(|e| op_error(&e))?;
        Ok(State {
            parents: parents.iter().map(|p| p.name.clone()).collect(),
            types: parents
                .iter()
                .flat_map(|p| p.types.iter())
                .map(|t| TypeState {
                    parent: t.parent.clone(),
                    type_id: t.id.clone(),
                    available_instances: t.available_instances,
                })
                .collect(),
            devices: devices
                .iter()
                .map(|d| DeviceState {
                    uuid: d.uuid.to_string(),
                    parent: d.parent.clone(),
                    type_id: d.type_id.clone(),
                })
                .collect(),
        })
    }

    fn create(
        &mut self,
        parent: &str,
        type_id: &str,
        uuid: Option<&str>,
    ) -> Result<String, OpError> {
        let uuid = match uuid {
            Some(text) => Some(Uuid::parse_str(text).map_err(|e| OpError {
                errno: None,
                message: format!("{text:?} is not a UUID: {e}"),
            })?),
            None => None,
        };
        self.host
            .create(parent, type_id, uuid)
            .map(|d| d.uuid.to_string())
            .map_err(|e| op_error(&e))
    }

    fn create_raw(&mut self, parent: &str, type_id: &str, bytes: &[u8]) -> Result<(), OpError> {
        self.host
            .write_create_raw(parent, type_id, bytes)
            .map_err(|e| op_error(&e))
    }

    fn remove(&mut self, uuid: &str) -> Result<(), OpError> {
        let uuid = Uuid::parse_str(uuid).map_err(|e| OpError {
            errno: None,
            message: format!("{uuid:?} is not a UUID: {e}"),
        })?;
        self.host.remove(&uuid).map_err(|e| op_error(&e))
    }

    fn remove_raw(&mut self, dir: &str, bytes: &[u8]) -> Result<(), OpError> {
        self.host
            .write_remove_raw(dir, bytes)
            .map_err(|e| op_error(&e))
    }

    fn remove_held(
        &mut self,
        parent: &str,
        type_id: &str,
        uuid: &str,
        plan: &HeldPlan,
    ) -> Result<HeldOutcome, OpError> {
        let dev_dir = self.root.join("sys/bus/mdev/devices").join(uuid);
        let mut holder: Box<dyn Holder> = match &self.sim_control {
            Some(control) => Box::new(SimOwner::start(&self.root, control, uuid)?),
            None => {
                let group = sys::iommu_group(&dev_dir).map_err(|e| vfio_error(&e))?;
                let hold = sys::VfioHold::open(&self.root.join("dev/vfio"), group, uuid)
                    .map_err(|e| vfio_error(&e))?;
                Box::new(VfioHolder(hold))
            }
        };
        let root = self.root.clone();
        let (parent, type_id, uuid) = (parent.to_string(), type_id.to_string(), uuid.to_string());
        let mut look = || {
            let mut seen = Seen {
                facts: sysfs_facts(&root, &parent, &type_id, &uuid),
                ..Seen::default()
            };
            match self.state() {
                Ok(s) => seen.state = Some(s),
                Err(e) => seen.state_error = e.errno,
            }
            seen
        };
        run_held_remove(
            &dev_dir.join("remove"),
            b"1\n",
            holder.as_mut(),
            plan,
            &mut look,
        )
    }

    fn hook(&mut self, hook: Hook) -> Option<Result<(), OpError>> {
        let cmd = match hook {
            Hook::Unload => self.unload_cmd.as_deref()?,
            Hook::Load => self.load_cmd.as_deref()?,
        };
        Some(run_shell(cmd))
    }
}

fn vfio_error(e: &sys::VfioError) -> OpError {
    OpError {
        errno: e.errno(),
        message: format!("holding the device through VFIO: {}", error_chain(e)),
    }
}

/// A device held through VFIO.
struct VfioHolder(sys::VfioHold);

impl Holder for VfioHolder {
    fn release(&mut self) -> Result<(), OpError> {
        self.0.release();
        Ok(())
    }
}

/// A device held by an owner process of the simulated host.
struct SimOwner {
    control: PathBuf,
    pid: u32,
}

impl SimOwner {
    /// `spawn <uuid> busy=0`, then find the new owner's pid in the owners file.
    fn start(
        root: &std::path::Path,
        control: &std::path::Path,
        uuid: &str,
    ) -> Result<Self, OpError> {
        let owners = root.join("sys/kernel/debug/gvm-sim/owners");
        let pids = |text: &str| -> Vec<u32> {
            text.lines()
                .filter_map(|l| {
                    let mut w = l.split_whitespace();
                    let pid = w.next()?.parse().ok()?;
                    (w.next()? == uuid).then_some(pid)
                })
                .collect()
        };
        let read = |path: &std::path::Path| {
            std::fs::read_to_string(path).map_err(|e| OpError {
                errno: e.raw_os_error(),
                message: format!("reading {}: {e}", path.display()),
            })
        };
        let before = pids(&read(&owners)?);
        write_control(control, &format!("spawn {uuid} busy=0\n"))?;
        let after = pids(&read(&owners)?);
        match after.into_iter().find(|p| !before.contains(p)) {
            Some(pid) => Ok(SimOwner {
                control: control.to_path_buf(),
                pid,
            }),
            None => Err(OpError {
                errno: None,
                message: format!("no new owner of {uuid} in {} after spawn", owners.display()),
            }),
        }
    }
}

impl Holder for SimOwner {
    fn release(&mut self) -> Result<(), OpError> {
        write_control(&self.control, &format!("kill {}\n", self.pid))
    }
}

fn write_control(control: &std::path::Path, command: &str) -> Result<(), OpError> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(control)
        .and_then(|mut f| f.write_all(command.as_bytes()))
        .map_err(|e| OpError {
            errno: e.raw_os_error(),
            message: format!("writing {command:?} to {}: {e}", control.display()),
        })
}

fn run_shell(cmd: &str) -> Result<(), OpError> {
    match Command::new("sh").arg("-c").arg(cmd).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(OpError {
            errno: None,
            message: format!(
                "`{cmd}` failed with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }),
        Err(e) => Err(OpError {
            errno: e.raw_os_error(),
            message: format!("could not run `sh -c {cmd:?}`: {e}"),
        }),
    }
}

fn run(args: Args) -> Result<()> {
    let host = MdevHost::new(HostRoot::new(&args.root));
    let parent = host.parent(&args.parent).with_context(|| {
        format!(
            "finding mdev parent '{}' under {} (is the parent driver loaded?)",
            args.parent,
            args.root.display()
        )
    })?;
    let ids = parent.type_ids();
    let type_a = args.type_a.clone().or_else(|| ids.first().cloned());
    let type_b = args.type_b.clone().or_else(|| ids.get(1).cloned());
    let (Some(type_a), Some(type_b)) = (type_a, type_b) else {
        bail!(
            "parent '{}' offers {} type(s) ({}); the scenario needs two sharing one pool: pass --type-a/--type-b",
            args.parent,
            ids.len(),
            ids.join(", ")
        );
    };
    let mut client = Client {
        host,
        root: args.root.clone(),
        sim_control: args.sim_control,
        unload_cmd: args.unload_cmd,
        load_cmd: args.load_cmd,
    };
    let steps = mtty_scenario(&type_a, &type_b);
    let stdout = std::io::stdout();
    let mut failed_write = None;
    execute(&mut client, &args.parent, &steps, &mut |rec| {
        let mut out = stdout.lock();
        let line = serde_json::to_string(rec).map_err(std::io::Error::from);
        if let Err(e) = line.and_then(|l| writeln!(out, "{l}").and_then(|()| out.flush())) {
            failed_write.get_or_insert(e);
        }
    });
    if let Some(e) = failed_write {
        return Err(e).context("writing step records to standard output");
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gvm-mdev-conformance: error: {}", error_chain(&*e));
            ExitCode::FAILURE
        }
    }
}
