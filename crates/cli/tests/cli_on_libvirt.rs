//! `gvm-vgpu` against a real libvirtd (Debian's libvirt 9, QEMU under TCG) and the simulated
//! host: `show DOMAIN` for a domain the daemon does not resolve, and what `detach` removes.
//!
//! Needs root, /dev/fuse, libvirtd, virsh and qemu-system-x86_64; every test prints
//! `SKIP: <reason>` without them. The libvirtd fixture is the libvirt crate's.
#![cfg(feature = "libvirt")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

#[path = "../../libvirt/tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Output;

use common::{domain_xml, require_libvirtd, unique_name, TestDomain, URI};
use gvm_testkit::{require_root_and_fuse, skip, SimHost, SimModel};
use serde_json::Value;
use support::{gvm_vgpu, payload, stderr, stdout, succeeded, wait_up_to, Daemon};

mod support;

fn cli(root: &Path, args: &[&str]) -> Output {
    gvm_vgpu(root, args)
        .env("LIBVIRT_DEFAULT_URI", URI)
        .output()
        .expect("run gvm-vgpu")
}

fn ok(root: &Path, args: &[&str]) -> String {
    succeeded(&cli(root, args), args)
}

/// `--json` output's payload: the one member beside `"schema": 1`.
fn json(root: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    payload(&serde_json::from_str(&ok(root, &all)).expect("valid JSON"))
}

/// A simulated host (where, as on a kernel, removing a held vGPU would block) and a
/// libvirtd, or the reason to skip.
fn sim_and_libvirtd(test: &str) -> Option<SimHost> {
    if skip(test, require_root_and_fuse()) || skip(test, require_libvirtd()) {
        return None;
    }
    Some(SimHost::start_with(
        SimModel::GvmSim,
        2,
        &["--held-remove", "block"],
    ))
}

/// Poll `f` until it holds (true) or 20 s pass.
fn wait_for(f: impl FnMut() -> bool) -> bool {
    wait_up_to(std::time::Duration::from_secs(20), f)
}

fn attach_new(root: &Path, domain: &str, extra: &[&str]) -> String {
    let mut args = vec!["attach", domain, "--type", "sim-4c"];
    args.extend_from_slice(extra);
    let v = json(root, &args);
    assert_eq!(v["created"], true, "{v}");
    v["uuid"].as_str().unwrap().to_string()
}

#[test]
fn show_domain_reads_a_defined_domain_from_libvirt_with_or_without_a_daemon() {
    let test = "show_domain_reads_a_defined_domain_from_libvirt";
    let Some(sim) = sim_and_libvirtd(test) else {
        return;
    };
    let root = sim.root();
    let name = unique_name("show");
    let _dom = TestDomain::define(&name, &domain_xml(&name, "", ""));
    let uuid = attach_new(root, &name, &[]);

    // No daemon: the shut-off domain is read from its definition, the vGPU from the kernel.
    let o = cli(root, &["show", &name]);
    assert!(o.status.success(), "show {name}: {}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains(&format!(
            "Domain {name} (shut off, read from its definition): 1 vGPU"
        )),
        "{text}"
    );
    assert!(text.contains(&format!("vGPU {uuid}")), "{text}");
    assert!(text.contains("kernel type:  gvmsim-1"), "{text}");
    assert!(
        text.contains(&format!(
            "attached:     to {name} by <hostdev> and gvm metadata"
        )),
        "{text}"
    );
    let v = json(root, &["show", &name]);
    assert_eq!(v["domain"], name.as_str(), "{v}");
    assert_eq!(v["state"], "shut off", "{v}");
    assert_eq!(v["vgpus"][0]["uuid"], uuid.as_str(), "{v}");
    assert_eq!(v["vgpus"][0]["present"], true, "{v}");
    assert_eq!(v["vgpus"][0]["vgpu"]["mdev_type"], "gvmsim-1", "{v}");
    assert_eq!(v["vgpus"][0]["metadata"]["type_name"], "sim-4c", "{v}");

    // A vGPU the domain names that does not exist (yet) is shown from the metadata.
    ok(root, &["remove", &uuid]);
    let text = ok(root, &["show", &name]);
    assert!(
        text.contains(&format!(
            "not created: the libvirt hook creates it when {name} starts"
        )),
        "{text}"
    );
    assert!(text.contains("catalog type: sim-4c"), "{text}");
    let v = json(root, &["show", &name]);
    assert_eq!(v["vgpus"][0]["present"], false, "{v}");

    // A daemon that does not follow libvirt: the CLI looks the domain up itself and shows
    // the vGPU as the daemon sees it.
    let _daemon = Daemon::start(root);
    ok(root, &["create", "--type", "sim-4c", "--uuid", &uuid]);
    assert!(
        wait_for(|| cli(root, &["show", &uuid]).status.success()),
        "gvm-vgpud never saw vGPU {uuid}"
    );
    let v = json(root, &["show", &name]);
    let daemon_view = &v["vgpus"][0]["vgpu"];
    assert_eq!(daemon_view["uuid"], uuid.as_str(), "{v}");
    assert_eq!(daemon_view["domain"], name.as_str(), "{v}");
    let text = ok(root, &["show", &name]);
    assert!(text.contains(&format!("domain:       {name}")), "{text}");
    assert!(text.contains("memory limit:"), "{text}");

    // A name libvirt does not know: the error names it and how to list the domains.
    let o = cli(root, &["show", "gvmtest-no-such-domain"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("no domain named 'gvmtest-no-such-domain'")
            && err.contains(&format!("virsh -c {URI} list --all")),
        "{err}"
    );
}

fn exists(root: &Path, uuid: &str) -> bool {
    root.join("sys/bus/mdev/devices").join(uuid).exists()
}

#[test]
fn detach_removes_the_vgpu_attach_created_and_never_one_the_user_made() {
    let test = "detach_removes_the_vgpu_attach_created";
    let Some(sim) = sim_and_libvirtd(test) else {
        return;
    };
    let root = sim.root();
    let name = unique_name("detach");
    let _dom = TestDomain::define(&name, &domain_xml(&name, "", ""));
    let other = unique_name("detach-other");
    let _other = TestDomain::define(&other, &domain_xml(&other, "", ""));

    // attach --type on a shut-off domain (its definition): detach removes the vGPU again.
    let made = attach_new(root, &name, &[]);
    assert!(exists(root, &made));
    let text = ok(root, &["detach", &name, "--uuid", &made]);
    assert!(
        text.contains("and removed it (attach had created it)"),
        "{text}"
    );
    assert!(!exists(root, &made), "the vGPU attach created is gone");

    // A vGPU the user made and attached by UUID stays.
    let v = json(root, &["create", "--type", "sim-4c"]);
    let users = v["uuid"].as_str().unwrap().to_string();
    ok(root, &["attach", &name, "--uuid", &users]);
    let v = json(root, &["detach", &name, "--uuid", &users]);
    assert_eq!(v["created_by_attach"], false, "{v}");
    assert_eq!(v["removed_vgpu"], false, "{v}");
    assert!(exists(root, &users), "the user's vGPU stays");

    // --keep-vgpu keeps one attach created; while it is held, detach without it is refused
    // before anything changes, and says so.
    let kept = attach_new(root, &name, &[]);
    sim.control(&format!("spawn {kept}")).unwrap();
    let mut owner = None;
    assert!(
        wait_for(|| {
            owner = sim
                .owners()
                .into_iter()
                .find(|o| o.get(1) == Some(&kept))
                .and_then(|o| o.first().cloned());
            owner.is_some()
        }),
        "the owner never opened {kept}"
    );
    let o = cli(root, &["detach", &name, "--uuid", &kept]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("pass --keep-vgpu"), "{}", stderr(&o));
    let v = json(root, &["show", &name]);
    assert_eq!(v["vgpus"][0]["uuid"], kept.as_str(), "still attached: {v}");
    let text = ok(root, &["detach", &name, "--uuid", &kept, "--keep-vgpu"]);
    assert!(text.contains("--keep-vgpu"), "{text}");
    assert!(exists(root, &kept));
    sim.control(&format!("kill {}", owner.unwrap())).unwrap();
    ok(root, &["remove", "--wait", &kept]);

    // Attached to another domain by UUID as well: it stays for that one.
    let shared = attach_new(root, &name, &[]);
    ok(root, &["attach", &other, "--uuid", &shared]);
    let v = json(root, &["detach", &name, "--uuid", &shared]);
    assert_eq!(v["removed_vgpu"], false, "{v}");
    assert_eq!(v["still_used_by"][0], other.as_str(), "{v}");
    assert!(exists(root, &shared));
}
