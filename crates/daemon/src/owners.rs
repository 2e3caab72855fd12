//! Owner resolution: which host processes do a vGPU's GPU work.
//!
//! GVM sees host processes only, so a vGPU is tied to its *owners*. The rules
//! (the owner rules in docs/daemon.md), first match wins:
//! 1. [`OwnerRule::Environment`]: `GVM_VGPU_UUID=<uuid>` in `/proc/<pid>/environ`;
//! 2. [`OwnerRule::Cgroup`]: a component of the process's cgroup path (in
//!    `/proc/<pid>/cgroup`) is the UUID (optionally with a `.scope`/`.slice` suffix);
//! 3. [`OwnerRule::Libvirt`]: the pid in `/run/libvirt/qemu/<domain>.pid` whose live
//!    XML `<domain>.xml` names the UUID in an mdev `<hostdev>` address or in a
//!    `<gvm:vgpu uuid=.../>` metadata element, as gvm-libvirt's domain-XML reader (the one
//!    the hook and the libvirt connection use) finds them
//!    ([`gvm_libvirt::domain_xml::parse_status_file`]).
//!
//! 4. [`OwnerRule::Vfio`]: for a VF vGPU (whose libvirt `<hostdev>` is a PCI address, not a
//!    UUID), the process holding its VF's VFIO device open (`/dev/vfio/<group>` or
//!    `/dev/vfio/devices/vfioN`), as `fuser` finds it: the QEMU the VF is assigned to. The
//!    core hands the resolver the nodes of the live VF vGPUs ([`Resolver::set_vf_nodes`]).
//!
//! The environment and cgroup rules name one vGPU. The libvirt rule names every vGPU
//! of the domain: a QEMU with several mdevs owns them all, and the daemon gives each
//! of them only the gcgroups on its parent's GVM GPU ([`crate::model::Observed::owns`]).
//!
//! The environment and cgroup parsers are pure; [`Resolver`] does the reads and caches per pid (a
//! process's environment does not change; its cgroup is re-read while unowned).
//!
//! Rules 1 and 2 are claims a process makes about itself: any user can set an environment
//! variable, and a user's systemd manager can name a scope after any UUID. So they are
//! authorised: [`ClaimPolicy`] says which uids may claim a vGPU that way (root, the daemon's
//! own user and libvirt's QEMU users by default, `--owner-uid` and a definition's
//! `owner_uids` add more). A refused claim leaves the process unowned; the daemon logs it once
//! and `show` lists it. Rule 3 comes from libvirt's root-owned run directory and needs no
//! check.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use gvm_host_root::HostRoot;
use gvm_libvirt::domain_xml;
use gvm_proto::OwnerRule;
use gvm_shim_abi::vgpu_env::vgpu_uuid_in_environ;
use tracing::debug;
use uuid::Uuid;

/// The vGPU named by `GVM_VGPU_UUID` in a NUL-separated environ block.
pub fn uuid_from_environ(environ: &[u8]) -> Option<Uuid> {
    Uuid::try_parse(vgpu_uuid_in_environ(environ)?).ok()
}

/// The vGPU named by a component of the process's cgroup path(s).
pub fn uuid_from_cgroup(text: &str) -> Option<Uuid> {
    text.lines().find_map(|line| {
        let path = line.splitn(3, ':').nth(2)?;
        path.split('/').find_map(|comp| {
            let c = comp
                .strip_suffix(".scope")
                .or_else(|| comp.strip_suffix(".slice"))
                .unwrap_or(comp);
            if c.len() == 36 {
                Uuid::try_parse(c).ok()
            } else {
                None
            }
        })
    })
}

/// The effective uid in a `/proc/<pid>/status` text (the second field of its `Uid:` line).
pub fn uid_from_status(status: &str) -> Option<u32> {
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The id of `name` in an `/etc/passwd` (its uid) or `/etc/group` (its gid) text: both are
/// `name:password:id:…` lines.
pub fn id_in_db(db: &str, name: &str) -> Option<u32> {
    db.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

/// This process's effective uid (the owner of `/proc/self`; root when it cannot be read).
pub fn own_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(0)
}

/// The users libvirt runs QEMU as on Debian (`libvirt-qemu`) and Fedora/RHEL (`qemu`).
pub const QEMU_USERS: [&str; 2] = ["libvirt-qemu", "qemu"];

/// Which uids may claim a vGPU through their own environment or cgroup (rules 1 and 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPolicy {
    uids: BTreeSet<u32>,
}

impl ClaimPolicy {
    /// Root and `uids`.
    pub fn new(uids: impl IntoIterator<Item = u32>) -> ClaimPolicy {
        let mut uids: BTreeSet<u32> = uids.into_iter().collect();
        uids.insert(0);
        ClaimPolicy { uids }
    }

    /// The default on `host`: root, `own_uid` (the daemon's user) and the QEMU users of
    /// [`QEMU_USERS`] that the host's `/etc/passwd` has.
    pub fn default_for(host: &HostRoot, own_uid: u32) -> ClaimPolicy {
        let passwd = fs::read_to_string(host.path("/etc/passwd")).unwrap_or_default();
        let qemu = QEMU_USERS.iter().filter_map(|u| id_in_db(&passwd, u));
        ClaimPolicy::new(qemu.chain([own_uid]))
    }

    /// This policy with `more` uids allowed too.
    pub fn with(mut self, more: impl IntoIterator<Item = u32>) -> ClaimPolicy {
        self.uids.extend(more);
        self
    }

    /// Whether a process of `uid` may claim a vGPU whose definition allows `definition_uids`.
    /// A process whose uid cannot be read may not.
    pub fn allows(&self, uid: Option<u32>, definition_uids: &[u32]) -> bool {
        uid.is_some_and(|u| self.uids.contains(&u) || definition_uids.contains(&u))
    }

    /// The uids allowed everywhere, sorted.
    pub fn uids(&self) -> impl Iterator<Item = u32> + '_ {
        self.uids.iter().copied()
    }
}

/// A running libvirt domain as found in its run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    /// Domain name.
    pub name: String,
    /// QEMU pid.
    pub pid: Option<u32>,
    /// vGPUs its XML names.
    pub uuids: Vec<Uuid>,
    /// The domain's own UUID (what NVML reports as a KVM VM's ID).
    pub domain_uuid: Option<Uuid>,
}

/// The vGPUs one process owns and the rule that tied it to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    /// The vGPUs, never empty: one for the environment and cgroup rules, every vGPU
    /// of the domain for the libvirt rule.
    pub uuids: Vec<Uuid>,
    /// The rule that matched.
    pub rule: OwnerRule,
    /// The process's effective uid, read for the claims of rules 1 and 2 (`None` for the
    /// libvirt rule, or when its status could not be read).
    pub uid: Option<u32>,
}

/// Reads owners through the host root and caches what cannot change.
#[derive(Debug)]
pub struct Resolver {
    host: HostRoot,
    by_pid: HashMap<u32, Option<Ownership>>,
    domains: Vec<Domain>,
    libvirt_stamp: Option<(SystemTime, usize)>,
    vf_nodes: Vec<(PathBuf, Uuid)>,
}

impl Resolver {
    /// A resolver for `host`.
    pub fn new(host: HostRoot) -> Resolver {
        Resolver {
            host,
            by_pid: HashMap::new(),
            domains: Vec::new(),
            libvirt_stamp: None,
            vf_nodes: Vec::new(),
        }
    }

    /// The VFIO nodes of the live VF vGPUs, for [`OwnerRule::Vfio`]. When they change, every
    /// process is resolved again: an unowned one may hold a new VF, a VFIO owner an old one.
    pub fn set_vf_nodes(&mut self, mut nodes: Vec<(PathBuf, Uuid)>) {
        nodes.sort();
        if nodes == self.vf_nodes {
            return;
        }
        self.vf_nodes = nodes;
        self.by_pid
            .retain(|_, v| matches!(v, Some(o) if o.rule != OwnerRule::Vfio));
    }

    /// Running domains as last read.
    pub fn domains(&self) -> &[Domain] {
        &self.domains
    }

    /// The domain holding `uuid`, if any.
    pub fn domain_of(&self, uuid: &Uuid) -> Option<&str> {
        self.domains
            .iter()
            .find(|d| d.uuids.contains(uuid))
            .map(|d| d.name.as_str())
    }

    /// The UUID of the running domain holding `uuid`, if any.
    pub fn domain_uuid_of(&self, uuid: &Uuid) -> Option<Uuid> {
        self.domains
            .iter()
            .find(|d| d.uuids.contains(uuid))
            .and_then(|d| d.domain_uuid)
    }

    /// Re-read libvirt's run directory if it changed; true when it did.
    pub fn refresh_libvirt(&mut self) -> bool {
        let dir = self.host.libvirt_run_dir();
        let stamp = fs::metadata(&dir)
            .and_then(|m| m.modified())
            .ok()
            .map(|t| (t, fs::read_dir(&dir).map(|r| r.count()).unwrap_or(0)));
        if stamp == self.libvirt_stamp && stamp.is_some() {
            return false;
        }
        self.libvirt_stamp = stamp;
        // A hand-written VF hostdev (no `ua-gvm-<uuid>` alias) is tied by the one record of
        // its VF; records that cannot be read tie nothing.
        let records = gvm_vf::Assignments::new(gvm_vf::VfHost::new(self.host.clone()))
            .list()
            .unwrap_or_default();
        let domains = read_domains(&dir, &records);
        let changed = domains != self.domains;
        self.domains = domains;
        if changed {
            // Ownership by libvirt may have changed for any pid: resolve again.
            self.by_pid
                .retain(|_, v| matches!(v, Some(o) if o.rule != OwnerRule::Libvirt));
        }
        changed
    }

    /// The vGPUs `pid` owns, using the cache; `None` for unowned processes. Unowned
    /// processes are re-resolved only when `retry_unowned` is set.
    pub fn owner_of(&mut self, pid: u32, retry_unowned: bool) -> Option<Ownership> {
        if let Some(hit) = self.by_pid.get(&pid) {
            if hit.is_some() || !retry_unowned {
                return hit.clone();
            }
        }
        let found = self.resolve(pid);
        self.by_pid.insert(pid, found.clone());
        found
    }

    /// Forget pids that are no longer in the GVM tree.
    pub fn retain_pids(&mut self, alive: &dyn Fn(u32) -> bool) {
        self.by_pid.retain(|pid, _| alive(*pid));
    }

    fn resolve(&self, pid: u32) -> Option<Ownership> {
        let proc_dir = self.host.proc_dir().join(pid.to_string());
        let uid = || {
            fs::read_to_string(proc_dir.join("status"))
                .ok()
                .and_then(|s| uid_from_status(&s))
        };
        let one = |u: Uuid, rule: OwnerRule| Ownership {
            uuids: vec![u],
            rule,
            uid: uid(),
        };
        if let Ok(env) = fs::read(proc_dir.join("environ")) {
            if let Some(u) = uuid_from_environ(&env) {
                return Some(one(u, OwnerRule::Environment));
            }
        }
        if let Ok(cg) = fs::read_to_string(proc_dir.join("cgroup")) {
            if let Some(u) = uuid_from_cgroup(&cg) {
                return Some(one(u, OwnerRule::Cgroup));
            }
        }
        let by_libvirt = self
            .domains
            .iter()
            .find(|d| d.pid == Some(pid) && !d.uuids.is_empty())
            .map(|d| Ownership {
                uuids: d.uuids.clone(),
                rule: OwnerRule::Libvirt,
                uid: None,
            });
        by_libvirt.or_else(|| self.vf_holder(&proc_dir))
    }

    /// The VF vGPUs whose VFIO node the process in `proc_dir` holds open, if any.
    fn vf_holder(&self, proc_dir: &Path) -> Option<Ownership> {
        if self.vf_nodes.is_empty() {
            return None;
        }
        let mut uuids: Vec<Uuid> = Vec::new();
        for fd in fs::read_dir(proc_dir.join("fd")).ok()?.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            for (node, uuid) in &self.vf_nodes {
                if holds_node(&target, node) && !uuids.contains(uuid) {
                    uuids.push(*uuid);
                }
            }
        }
        (!uuids.is_empty()).then_some(Ownership {
            uuids,
            rule: OwnerRule::Vfio,
            uid: None,
        })
    }
}

/// Whether an fd's link target is `node` (a node unlinked while held reads `<path> (deleted)`).
fn holds_node(target: &Path, node: &Path) -> bool {
    let text = target.to_string_lossy();
    Path::new(text.strip_suffix(" (deleted)").unwrap_or(&text)) == node
}

fn read_domains(dir: &Path, vf_records: &[gvm_vf::Assignment]) -> Vec<Domain> {
    let mut by_name: BTreeMap<String, Domain> = BTreeMap::new();
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    for entry in rd.flatten() {
        let fname = entry.file_name().to_string_lossy().into_owned();
        let (name, is_pid) = if let Some(n) = fname.strip_suffix(".pid") {
            (n, true)
        } else if let Some(n) = fname.strip_suffix(".xml") {
            (n, false)
        } else {
            continue;
        };
        let d = by_name.entry(name.to_string()).or_insert_with(|| Domain {
            name: name.to_string(),
            pid: None,
            uuids: Vec::new(),
            domain_uuid: None,
        });
        if is_pid {
            d.pid = fs::read_to_string(entry.path())
                .ok()
                .and_then(|t| t.trim().parse().ok());
        } else if let Ok(xml) = fs::read_to_string(entry.path()) {
            match domain_xml::parse_status_file(&xml) {
                Ok(mut info) => {
                    info.bind_vf_records(vf_records);
                    d.uuids = info.vgpus();
                    d.domain_uuid = info.uuid;
                }
                Err(e) => {
                    debug!(domain = name, "cannot read the live domain XML: {e}");
                    d.uuids = Vec::new();
                }
            }
        }
    }
    by_name.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: &str = "2b2f7d5a-2d4e-4f6c-8a1b-0c9d8e7f6a5b";

    #[test]
    fn claims_are_allowed_for_root_the_policys_uids_and_the_definitions_only() {
        let passwd = "root:x:0:0::/root:/bin/sh\nlibvirt-qemu:x:64055:994::/:/usr/sbin/nologin\n";
        assert_eq!(id_in_db(passwd, "libvirt-qemu"), Some(64055));
        assert_eq!(id_in_db(passwd, "qemu"), None);
        assert_eq!(
            uid_from_status("Name:\tx\nUid:\t1000\t1001\t1001\t1001\n"),
            Some(1001),
            "the effective uid"
        );
        let p = ClaimPolicy::new([64055]);
        assert!(p.allows(Some(0), &[]) && p.allows(Some(64055), &[]));
        assert!(!p.allows(Some(1000), &[]), "another user's claim");
        assert!(p.allows(Some(1000), &[1000]), "allowed by the definition");
        assert!(!p.allows(None, &[]), "an unreadable uid is not allowed");
        assert!(p.clone().with([1000]).allows(Some(1000), &[]));
        assert_eq!(p.uids().collect::<Vec<_>>(), vec![0, 64055]);
    }

    #[test]
    fn environment_rule() {
        let env = format!("PATH=/bin\0GVM_VGPU_UUID={U}\0HOME=/\0");
        assert_eq!(
            uuid_from_environ(env.as_bytes())
                .map(|u| u.to_string())
                .as_deref(),
            Some(U)
        );
        assert_eq!(uuid_from_environ(b"GVM_VGPU_UUIDX=1\0A=B"), None);
        assert_eq!(uuid_from_environ(b"GVM_VGPU_UUID=not-a-uuid\0"), None);
    }

    #[test]
    fn a_process_holding_a_vf_vgpus_vfio_node_owns_it() {
        let Ok(t) = tempfile::tempdir() else {
            println!("SKIP: no temp dir");
            return;
        };
        let host = HostRoot::new(t.path()).with_proc_dir(t.path().join("proc"));
        let node = t.path().join("dev/vfio/17");
        let fd_dir = t.path().join("proc/4242/fd");
        assert!(fs::create_dir_all(&fd_dir).is_ok());
        assert!(fs::create_dir_all(t.path().join("proc/4343/fd")).is_ok());
        assert!(std::os::unix::fs::symlink(&node, fd_dir.join("7")).is_ok());
        let u = Uuid::parse_str(U).ok();
        let mut r = Resolver::new(host);
        // No VF vGPU yet: unowned, and the answer is cached.
        assert_eq!(r.owner_of(4242, false), None);
        r.set_vf_nodes(u.map(|u| (node.clone(), u)).into_iter().collect());
        let found = r.owner_of(4242, false);
        assert_eq!(
            found.map(|o| (o.uuids, o.rule)),
            Some((u.into_iter().collect(), OwnerRule::Vfio))
        );
        assert_eq!(r.owner_of(4343, false), None, "holds nothing");
        // The VF vGPU is gone: its holder is resolved again, and owns nothing.
        r.set_vf_nodes(Vec::new());
        assert_eq!(r.owner_of(4242, false), None);
    }

    #[test]
    fn cgroup_rule() {
        let cg = format!("0::/machine.slice/{U}.scope\n");
        assert!(uuid_from_cgroup(&cg).is_some());
        let cg = format!("0::/vgpus/{U}/worker\n");
        assert!(uuid_from_cgroup(&cg).is_some());
        assert_eq!(uuid_from_cgroup("0::/user.slice/session-1.scope\n"), None);
    }

    #[test]
    fn resolver_reads_proc_and_libvirt_through_the_root() {
        let Ok(d) = tempfile::tempdir() else { return };
        let proc_dir = d.path().join("proc");
        let host = HostRoot::new(d.path()).with_proc_dir(&proc_dir);
        for (pid, env, cg) in [
            (10, format!("GVM_VGPU_UUID={U}\0"), String::new()),
            (11, String::new(), format!("0::/x/{U}\n")),
            (12, String::new(), "0::/\n".to_string()),
        ] {
            let p = proc_dir.join(pid.to_string());
            assert!(fs::create_dir_all(&p).is_ok());
            assert!(fs::write(p.join("environ"), env).is_ok());
            assert!(fs::write(p.join("cgroup"), cg).is_ok());
        }
        let mut r = Resolver::new(host.clone());
        assert_eq!(
            r.owner_of(10, false).map(|o| o.rule),
            Some(OwnerRule::Environment)
        );
        assert_eq!(
            r.owner_of(11, false).map(|o| o.rule),
            Some(OwnerRule::Cgroup)
        );
        assert_eq!(r.owner_of(12, false), None);

        let lv = host.libvirt_run_dir();
        assert!(fs::create_dir_all(&lv).is_ok());
        assert!(fs::write(lv.join("vm1.pid"), "12\n").is_ok());
        let b = "0e0f5c9a-1111-4222-8333-944455556666";
        let xml = format!(
            "<domstatus state='running'><domain><name>vm1</name><devices>\
             <hostdev type='mdev'><source><address uuid='{U}'/></source></hostdev>\
             <hostdev type='mdev'><source><address uuid='{b}'/></source></hostdev>\
             </devices></domain></domstatus>"
        );
        assert!(fs::write(lv.join("vm1.xml"), xml).is_ok());
        assert_eq!(r.owner_of(12, false), None, "cached as unowned");
        assert!(r.refresh_libvirt(), "a new domain is a change");
        assert!(!r.refresh_libvirt(), "nothing changed since");
        // A libvirt change drops cached "unowned" answers.
        let o = r.owner_of(12, false);
        assert_eq!(o.as_ref().map(|o| o.rule), Some(OwnerRule::Libvirt));
        // A QEMU with two mdevs owns both, in the XML's order.
        let got: Vec<String> = o
            .map(|o| o.uuids.iter().map(|u| u.to_string()).collect())
            .unwrap_or_default();
        assert_eq!(got, vec![U.to_string(), b.to_string()]);
        // The single-vGPU rules still name exactly one.
        assert_eq!(r.owner_of(10, false).map(|o| o.uuids.len()), Some(1));
        let u = Uuid::try_parse(U).ok();
        assert_eq!(
            u.and_then(|u| r.domain_of(&u).map(str::to_string))
                .as_deref(),
            Some("vm1")
        );
    }

    #[test]
    fn a_hand_written_vf_hostdev_is_tied_to_its_vfs_one_record_and_its_domain_uuid_kept() {
        let Ok(d) = tempfile::tempdir() else { return };
        let host = HostRoot::new(d.path()).with_proc_dir(d.path().join("proc"));
        // The manager's record of a VF vGPU on VF 0000:41:00.4 (crates/vf's format).
        let records = host.config_dir().join("vf-vgpus");
        assert!(fs::create_dir_all(&records).is_ok());
        let record = format!(
            "{{\"uuid\":\"{U}\",\"pf\":\"0000:41:00.0\",\"vf\":\"0000:41:00.4\",\
             \"type_id\":1047,\"type_name\":\"NVIDIA H100-20C\"}}"
        );
        assert!(fs::write(records.join(format!("{U}.json")), record).is_ok());
        let lv = host.libvirt_run_dir();
        assert!(fs::create_dir_all(&lv).is_ok());
        let dom = "1f1e7b2a-0000-4000-8000-0000000000d1";
        // The VF as an operator writes it by hand: a PCI hostdev, no gvm alias.
        let xml = format!(
            "<domstatus state='running'><domain><name>vm2</name><uuid>{dom}</uuid><devices>\
             <hostdev mode='subsystem' type='pci' managed='no'><source><address \
             domain='0x0000' bus='0x41' slot='0x00' function='0x4'/></source></hostdev>\
             </devices></domain></domstatus>"
        );
        assert!(fs::write(lv.join("vm2.xml"), xml).is_ok());
        let mut r = Resolver::new(host);
        assert!(r.refresh_libvirt());
        let u = Uuid::try_parse(U).ok();
        assert_eq!(
            u.and_then(|u| r.domain_of(&u).map(str::to_string))
                .as_deref(),
            Some("vm2")
        );
        assert_eq!(
            u.and_then(|u| r.domain_uuid_of(&u)),
            Uuid::try_parse(dom).ok()
        );
    }
}
