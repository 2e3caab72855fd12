//! Unit tests of the domain XML reader and fragment builders, on XML libvirt itself produced.

use super::*;

/// `virsh dumpxml` of a domain defined with an mdev hostdev, gvm metadata and two channels
/// (captured from libvirt 9.0).
const DUMPXML: &str = include_str!("../testdata/dumpxml-mdev-metadata-channel.xml");
const HOSTDEV_UUID: &str = "4b20d080-1b54-4048-85b3-a6a62d165c01";
const META_UUID: &str = "6c1bb5f6-7a8b-4f0a-9a55-2b2a4cf0a7e1";

fn u(s: &str) -> Uuid {
    Uuid::try_parse(s).unwrap()
}

#[test]
fn reads_name_uuid_hostdev_metadata_and_agent_channel_from_dumpxml() {
    let info = parse(DUMPXML).unwrap();
    assert_eq!(info.name, "gvmtest-real");
    assert_eq!(info.uuid, Some(u("0197a026-66af-41fe-88d2-dc5ca73e74ec")));
    assert_eq!(
        info.hostdevs,
        vec![MdevHostdev {
            uuid: u(HOSTDEV_UUID),
            model: Some("vfio-pci".into()),
            display: Some(false),
        }]
    );
    assert_eq!(
        info.metadata,
        vec![MetaVgpu {
            uuid: u(META_UUID),
            type_name: Some("sim-4c".into()),
            parent: Some("gvmsim0".into()),
            mdev_type: Some("gvmsim-1".into()),
            persistent: false,
            created: false,
        }]
    );
    // Only the channel to the gvm port counts, not the qemu guest agent's.
    assert_eq!(
        info.agent_sockets,
        vec![PathBuf::from("/run/gvm-vgpu/agent/gvmtest-real.sock")]
    );
    assert_eq!(info.vgpus(), vec![u(HOSTDEV_UUID), u(META_UUID)]);
    assert!(info.has_hostdev(&u(HOSTDEV_UUID)));
    assert!(!info.has_hostdev(&u(META_UUID)));
    assert!(info.meta(&u(META_UUID)).is_some());
}

#[test]
fn reads_the_domain_inside_a_domstatus_file() {
    let status = format!(
        "<domstatus state='running' reason='booted' pid='4242'>\n  <monitor path='/x' type='unix'/>\n{DUMPXML}</domstatus>\n"
    );
    let info = parse(&status).unwrap();
    assert_eq!(info.name, "gvmtest-real");
    assert_eq!(info.vgpus().len(), 2);
}

#[test]
fn a_vgpu_in_both_hostdev_and_metadata_is_listed_once() {
    let xml = format!(
        "<domain type='qemu'><name>d</name><metadata><gvm:vgpus xmlns:gvm='{NAMESPACE}'><gvm:vgpu uuid='{HOSTDEV_UUID}'/></gvm:vgpus></metadata><devices>{}</devices></domain>",
        hostdev_xml(&u(HOSTDEV_UUID), None)
    );
    let info = parse(&xml).unwrap();
    assert_eq!(info.vgpus(), vec![u(HOSTDEV_UUID)]);
    // persistent defaults to yes when the attribute is absent.
    assert!(info.metadata[0].persistent);
}

#[test]
fn foreign_namespaces_and_untied_pci_hostdevs_are_no_vgpus() {
    let xml = format!(
        "<domain><name>d</name><metadata><x:vgpus xmlns:x='urn:other'><x:vgpu uuid='{META_UUID}'/></x:vgpus></metadata>\
         <devices><hostdev mode='subsystem' type='pci'><source><address domain='0' bus='1' slot='0' function='0'/></source></hostdev></devices></domain>"
    );
    let info = parse(&xml).unwrap();
    assert!(info.metadata.is_empty());
    assert!(info.hostdevs.is_empty());
    assert_eq!(info.pci_hostdevs.len(), 1);
    assert!(info.vgpus().is_empty());
}

#[test]
fn bad_input_is_an_error_naming_what_is_wrong() {
    let e = parse("<domain><name>d</name><devices><hostdev type='mdev'><source><address uuid='nope'/></source></hostdev></devices></domain>")
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"nope\""), "{e}");
    let e = parse("<domain><devices/></domain>")
        .unwrap_err()
        .to_string();
    assert!(e.contains("no <name>"), "{e}");
    let e = parse("<network><name>n</name></network>")
        .unwrap_err()
        .to_string();
    assert!(e.contains("<network>"), "{e}");
    assert!(parse("<domain><name>d</name>").is_err());
    let e = parse(&format!(
        "<domain><name>d</name><metadata><gvm:vgpus xmlns:gvm='{NAMESPACE}'><gvm:vgpu uuid='{META_UUID}' persistent='maybe'/></gvm:vgpus></metadata></domain>"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("maybe"), "{e}");
}

#[test]
fn generated_metadata_reads_back_once_wrapped_by_libvirt() {
    let entries = vec![
        MetaVgpu {
            uuid: u(META_UUID),
            type_name: Some("a'b".into()),
            parent: Some("gvmsim0".into()),
            mdev_type: Some("gvmsim-1".into()),
            persistent: false,
            created: true,
        },
        MetaVgpu {
            uuid: u(HOSTDEV_UUID),
            type_name: None,
            parent: None,
            mdev_type: None,
            persistent: true,
            created: false,
        },
    ];
    // libvirt re-namespaces the element: emulate it.
    let body = metadata_xml(&entries).replacen(
        "<vgpus>",
        &format!("<gvm:vgpus xmlns:gvm='{NAMESPACE}'>"),
        1,
    );
    let body = body
        .replace("<vgpu ", "<gvm:vgpu ")
        .replace("</vgpus>", "</gvm:vgpus>");
    let xml = format!("<domain><name>d</name><metadata>{body}</metadata></domain>");
    assert_eq!(parse(&xml).unwrap().metadata, entries);
    assert!(xml.contains("created='yes'"), "{xml}");
}

#[test]
fn created_marks_a_vgpu_attach_made_and_transient_entries_are_attachs_without_it() {
    let read = |attrs: &str| {
        parse(&format!(
            "<domain><name>d</name><metadata><gvm:vgpus xmlns:gvm='{NAMESPACE}'><gvm:vgpu uuid='{META_UUID}' {attrs}/></gvm:vgpus></metadata></domain>"
        ))
        .map(|info| info.metadata[0].clone())
    };
    let made = read("persistent='yes' created='yes'").unwrap();
    assert!(made.created && made.made_by_attach());
    // Written before `created` existed, or for a reused vGPU: the user's.
    let users = read("persistent='yes'").unwrap();
    assert!(!users.created && !users.made_by_attach());
    // A transient entry is always one attach made.
    assert!(read("persistent='no'").unwrap().made_by_attach());
    let e = read("created='perhaps'").unwrap_err().to_string();
    assert!(e.contains("perhaps") && e.contains(META_UUID), "{e}");
}

#[test]
fn hostdev_and_channel_fragments_round_trip_through_the_parser() {
    let sock = Path::new("/run/a'b&c.sock");
    let xml = format!(
        "<domain><name>d</name><devices>{}{}</devices></domain>",
        hostdev_xml(&u(HOSTDEV_UUID), Some(true)),
        agent_channel_xml(sock).unwrap()
    );
    let info = parse(&xml).unwrap();
    assert_eq!(info.hostdevs[0].display, Some(true));
    assert_eq!(info.agent_sockets, vec![sock.to_path_buf()]);
    assert!(hostdev_xml(&u(HOSTDEV_UUID), None)
        .starts_with("<hostdev mode='subsystem' type='mdev' model='vfio-pci'>"));
}

#[test]
fn entries_are_replaced_and_removed_by_uuid() {
    let a = MetaVgpu {
        uuid: u(META_UUID),
        type_name: Some("old".into()),
        parent: None,
        mdev_type: None,
        persistent: true,
        created: false,
    };
    let b = MetaVgpu {
        type_name: Some("new".into()),
        ..a.clone()
    };
    let list = with_entry(&[a], b.clone());
    assert_eq!(list, vec![b]);
    assert!(without_entry(&list, &u(META_UUID)).is_empty());
    assert_eq!(without_entry(&list, &u(HOSTDEV_UUID)).len(), 1);
}

/// What the daemon's owner resolution reads: the vGPUs of a live status file, hostdevs first,
/// then metadata-only ones; PCI hostdevs and the domain's own `<uuid>` are not vGPUs.
#[test]
fn a_status_file_names_its_metadata_and_mdev_hostdev_vgpus() {
    let xml = format!(
        "<domstatus state='running' pid='12'><domain type='kvm'><name>vm1</name><uuid>{META_UUID}</uuid>\
         <metadata><gvm:vgpus xmlns:gvm='{NAMESPACE}'><gvm:vgpu uuid=\"{META_UUID}\"/></gvm:vgpus></metadata>\
         <devices><hostdev mode='subsystem' type='pci'><source><address domain='0'/></source></hostdev>\
         <hostdev mode='subsystem' type='mdev' model='vfio-pci'>\
         <source><address uuid='{HOSTDEV_UUID}'/></source></hostdev></devices></domain></domstatus>"
    );
    let info = parse_status_file(&xml).unwrap();
    assert_eq!(info.name, "vm1");
    assert_eq!(info.vgpus(), vec![u(HOSTDEV_UUID), u(META_UUID)]);
    assert_eq!(parse(&xml).unwrap(), info, "the same reader as parse");
}

#[test]
fn a_status_file_needs_no_name_and_may_use_the_gvm_prefix_undeclared() {
    let unnamed = format!(
        "<domain><devices><hostdev mode='subsystem' type='mdev'><source><address uuid='{HOSTDEV_UUID}'/></source></hostdev></devices></domain>"
    );
    assert!(parse(&unnamed).is_err(), "parse still wants a <name>");
    let info = parse_status_file(&unnamed).unwrap();
    assert_eq!(info.name, "");
    assert_eq!(info.vgpus(), vec![u(HOSTDEV_UUID)]);

    let undeclared = format!(
        "<?xml version='1.0'?>\n<!-- written by hand -->\n<domain><metadata><gvm:vgpus><gvm:vgpu uuid='{META_UUID}' persistent='no'/></gvm:vgpus></metadata></domain>"
    );
    let e = parse(&undeclared).unwrap_err().to_string();
    assert!(
        e.contains("'gvm'"),
        "parse still wants the prefix declared: {e}"
    );
    let info = parse_status_file(&undeclared).unwrap();
    assert_eq!(info.vgpus(), vec![u(META_UUID)]);
    assert!(!info.metadata[0].persistent);
}

#[test]
fn a_status_file_is_still_checked_for_everything_else() {
    // Another undeclared prefix is not guessed.
    let other = format!(
        "<domain><metadata><x:vgpus><x:vgpu uuid='{META_UUID}'/></x:vgpus></metadata></domain>"
    );
    let e = parse_status_file(&other).unwrap_err().to_string();
    assert!(e.contains("'x'"), "{e}");
    // A foreign namespace is not gvm's, even under the gvm prefix.
    let foreign = format!(
        "<domain><metadata><gvm:vgpus xmlns:gvm='urn:other'><gvm:vgpu uuid='{META_UUID}'/></gvm:vgpus></metadata></domain>"
    );
    assert!(parse_status_file(&foreign).unwrap().vgpus().is_empty());
    // Not XML, no domain, or a bad UUID: errors, as for parse.
    assert!(parse_status_file("<hostdev type='mdev'>").is_err());
    assert!(parse_status_file("<!-- only a comment -->").is_err());
    let e = parse_status_file("<network><name>n</name></network>")
        .unwrap_err()
        .to_string();
    assert!(e.contains("<network>"), "{e}");
    let e = parse_status_file(
        "<domain><metadata><gvm:vgpus><gvm:vgpu uuid='nope'/></gvm:vgpus></metadata></domain>",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("\"nope\""), "{e}");
}

const VF_UUID: &str = "9d7c3a52-51e4-4b55-9a7e-0c3f1d2b8e61";

fn vf_domain(devices: &str) -> String {
    format!("<domain type='qemu'><name>vf</name><devices>{devices}</devices></domain>")
}

#[test]
fn the_vf_hostdev_names_the_function_unmanaged_and_is_tied_to_the_uuid() {
    let xml = vf_hostdev_xml(&u(VF_UUID), "0000:41:00.4").unwrap();
    assert_eq!(
        xml,
        format!(
            "<hostdev mode='subsystem' type='pci' managed='no'>\n  <source>\n    <address domain='0x0000' bus='0x41' slot='0x00' function='0x4'/>\n  </source>\n  <alias name='ua-gvm-{VF_UUID}'/>\n</hostdev>\n"
        )
    );
    let info = parse(&vf_domain(&xml)).unwrap();
    assert_eq!(
        info.pci_hostdevs,
        vec![PciHostdev {
            address: "0000:41:00.4".into(),
            uuid: Some(u(VF_UUID)),
            managed: false,
        }]
    );
    assert_eq!(info.vgpus(), vec![u(VF_UUID)]);
    assert!(info.has_hostdev(&u(VF_UUID)));
    assert!(info.hostdevs.is_empty(), "a VF is no mdev hostdev");
    // A high domain, bus, slot and function survive the round trip.
    let far = vf_hostdev_xml(&u(VF_UUID), "10de:ff:1f.7").unwrap();
    assert!(
        far.contains("domain='0x10de' bus='0xff' slot='0x1f' function='0x7'"),
        "{far}"
    );
    let back = parse(&vf_domain(&far)).unwrap();
    assert_eq!(back.pci_hostdevs[0].address, "10de:ff:1f.7");
}

#[test]
fn the_vf_hostdev_refuses_what_is_not_a_pci_function() {
    for bad in [
        "41:00.4",
        "0000:41:00.8",
        "0000:41:20.0",
        "0000:41:00.4,x",
        "",
    ] {
        let e = vf_hostdev_xml(&u(VF_UUID), bad).unwrap_err().to_string();
        assert!(e.contains("is not a PCI address"), "{bad}: {e}");
    }
}

#[test]
fn pci_addresses_read_as_libvirt_reads_them() {
    let p = |d, b, s, f| pci_address_from_parts(d, Some(b), Some(s), Some(f));
    assert_eq!(
        p(Some("0x0000"), "0x41", "0x00", "0x4").unwrap(),
        "0000:41:00.4"
    );
    // Decimal and octal, as strtoul with base 0; no domain means 0.
    assert_eq!(p(None, "65", "010", "4").unwrap(), "0000:41:08.4");
    assert!(p(None, "0x100", "0", "0").unwrap_err().contains("bus"));
    assert!(p(None, "0", "0x20", "0").unwrap_err().contains("slot"));
    assert!(p(None, "0", "0", "8").unwrap_err().contains("function"));
    assert!(p(None, "zz", "0", "0").is_err());
    assert!(pci_address_from_parts(None, None, Some("0"), Some("0"))
        .unwrap_err()
        .contains("no bus"));
}

#[test]
fn a_foreign_pci_hostdev_is_read_untied_and_a_bad_one_only_fails_with_our_alias() {
    let nic = "<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' bus='0x05' slot='0x00' function='0x1'/></source></hostdev>";
    let info = parse(&vf_domain(nic)).unwrap();
    assert_eq!(
        info.pci_hostdevs,
        vec![PciHostdev {
            address: "0000:05:00.1".into(),
            uuid: None,
            managed: true,
        }]
    );
    assert!(info.vgpus().is_empty(), "a NIC is no vGPU");
    let odd = "<hostdev mode='subsystem' type='pci'><source/></hostdev>";
    assert!(parse(&vf_domain(odd)).unwrap().pci_hostdevs.is_empty());
    let ours = format!(
        "<hostdev mode='subsystem' type='pci'><source/><alias name='ua-gvm-{VF_UUID}'/></hostdev>"
    );
    let e = parse(&vf_domain(&ours)).unwrap_err().to_string();
    assert!(
        e.contains(VF_UUID) && e.contains("no <source><address/>"),
        "{e}"
    );
    let not_uuid = "<hostdev mode='subsystem' type='pci'><source><address bus='1' slot='0' function='0'/></source><alias name='ua-gvm-nope'/></hostdev>";
    let e = parse(&vf_domain(not_uuid)).unwrap_err().to_string();
    assert!(e.contains("ua-gvm-nope"), "{e}");
}

#[test]
fn hand_written_vf_hostdevs_are_tied_by_the_one_record_of_their_vf() {
    let plain = |addr: &str| {
        let (bus, rest) = addr[5..].split_once(':').unwrap();
        let (slot, function) = rest.split_once('.').unwrap();
        format!("<hostdev mode='subsystem' type='pci' managed='no'><source><address domain='0x0000' bus='0x{bus}' slot='0x{slot}' function='0x{function}'/></source></hostdev>")
    };
    let record = |uuid: Uuid, vf: &str| gvm_vf::Assignment {
        uuid,
        pf: "0000:41:00.0".into(),
        vf: vf.into(),
        type_id: 1047,
        type_name: "NVIDIA H100-20C".into(),
    };
    let (one, two, three) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
    let aliased = vf_hostdev_xml(&u(VF_UUID), "0000:41:00.6").unwrap();
    let mut info = parse(&vf_domain(&format!(
        "{}{}{aliased}",
        plain("0000:41:00.4"),
        plain("0000:41:00.5")
    )))
    .unwrap();
    info.bind_vf_records(&[
        record(one, "0000:41:00.4"),
        // Two records of one VF: the address cannot say which vGPU it is.
        record(two, "0000:41:00.5"),
        record(three, "0000:41:00.5"),
        // The alias wins over a record of the same VF.
        record(three, "0000:41:00.6"),
    ]);
    let tied: Vec<Option<Uuid>> = info.pci_hostdevs.iter().map(|h| h.uuid).collect();
    assert_eq!(tied, vec![Some(one), None, Some(u(VF_UUID))]);
    assert_eq!(info.vgpus(), vec![one, u(VF_UUID)]);
}
