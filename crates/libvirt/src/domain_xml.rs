//! Reading and writing the parts of a libvirt domain XML that concern vGPUs (pure, no I/O).
//!
//! A libvirt domain hands an mdev vGPU to its guest with a `<hostdev>` element:
//!
//! ```xml
//! <hostdev mode='subsystem' type='mdev' model='vfio-pci' display='off'>
//!   <source><address uuid='4b20d080-1b54-4048-85b3-a6a62d165c01'/></source>
//! </hostdev>
//! ```
//!
//! libvirt only *opens* the device: it never creates it. gvm-vgpu therefore records how to make
//! each vGPU again in the domain's `<metadata>`, under its own XML namespace [`NAMESPACE`]
//! (prefix [`NAMESPACE_KEY`]):
//!
//! ```xml
//! <metadata>
//!   <gvm:vgpus xmlns:gvm="https://gvm-vgpu.dev/xmlns/libvirt/1">
//!     <gvm:vgpu uuid="4b20d080-…" type="sim-4c" parent="gvmsim0" mdev-type="gvmsim-1" persistent="yes" created="yes"/>
//!   </gvm:vgpus>
//! </metadata>
//! ```
//!
//! `persistent="no"` marks a vGPU that `attach` created for this domain only: the hook removes it
//! when the domain stops. `created="yes"` marks any vGPU `attach` created (rather than reused):
//! `detach` removes it with the binding. The metadata element also *binds* a vGPU to a domain without a
//! `<hostdev>` (a running domain on a host without VFIO cannot hold the mdev itself): the daemon
//! and [`crate::watch`](mod@crate::watch) treat both as the domain's vGPUs.
//!
//! An SR-IOV VF vGPU (docs/vendor-vfio.md) is a plain PCI device for VFIO instead: a
//! `<hostdev type='pci' managed='no'>` naming the VF's address. A VF address is not a vGPU's
//! identity (VFs are reused), so gvm ties the hostdev to the vGPU's UUID with a libvirt *user
//! alias* `ua-gvm-<uuid>` ([`VF_ALIAS_PREFIX`]), which libvirt keeps in both the definition and
//! the live XML, and records the vGPU in the metadata like an mdev one (`type` the VF type name,
//! `parent` its PF, no `mdev-type`):
//!
//! ```xml
//! <hostdev mode='subsystem' type='pci' managed='no'>
//!   <source><address domain='0x0000' bus='0x41' slot='0x00' function='0x4'/></source>
//!   <alias name='ua-gvm-4b20d080-1b54-4048-85b3-a6a62d165c01'/>
//! </hostdev>
//! ```
//!
//! A PCI hostdev without that alias (written by hand) is tied to a vGPU by
//! [`DomainInfo::bind_vf_records`], from the manager's records ([`gvm_vf::Assignments`]).
//!
//! The guest agent's channel is a `<channel type='unix'>` whose virtio target is named
//! [`AGENT_PORT_NAME`]; [`DomainInfo::agent_sockets`] lists their host socket paths.

use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::error::{Error, Result};

/// XML namespace of gvm-vgpu's domain metadata (a name, not a URL that is fetched).
pub const NAMESPACE: &str = "https://gvm-vgpu.dev/xmlns/libvirt/1";
/// The prefix libvirt writes for [`NAMESPACE`] (the `key` of `virDomainSetMetadata`).
pub const NAMESPACE_KEY: &str = "gvm";
/// Prefix of the libvirt user alias that ties a VF `<hostdev>` to its vGPU: `ua-gvm-<uuid>`.
pub const VF_ALIAS_PREFIX: &str = "ua-gvm-";
/// Name of the guest agent's virtio-serial port.
pub const AGENT_PORT_NAME: &str = "org.gvm.vgpu.agent.0";

/// One vGPU as the domain's gvm metadata records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaVgpu {
    /// The vGPU's UUID.
    pub uuid: Uuid,
    /// Catalog type name (`sim-4c`), used to create it when no parent/mdev-type is recorded.
    pub type_name: Option<String>,
    /// Parent device it was created on.
    pub parent: Option<String>,
    /// Kernel mdev type id it was created with.
    pub mdev_type: Option<String>,
    /// `false` when attach created it for this domain only (removed when the domain stops).
    pub persistent: bool,
    /// `true` when `attach` created the vGPU (`created="yes"`) rather than reused one the user
    /// made: `detach` then removes it too. Absent (`false`) for a reused vGPU and in entries
    /// written before the attribute existed; `persistent="no"` entries are attach's either way.
    pub created: bool,
}

impl MetaVgpu {
    /// Whether `attach` made this vGPU for the domain, so that detaching it removes it.
    pub fn made_by_attach(&self) -> bool {
        self.created || !self.persistent
    }
}

/// An mdev `<hostdev>` of the domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdevHostdev {
    /// The mdev UUID in `<source><address uuid=…/>`.
    pub uuid: Uuid,
    /// `model` (normally `vfio-pci`).
    pub model: Option<String>,
    /// `display='on|off'`, when given.
    pub display: Option<bool>,
}

/// A PCI `<hostdev>` of the domain: how an SR-IOV VF vGPU is handed to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciHostdev {
    /// The function in `<source><address domain= bus= slot= function=/>`, as `0000:41:00.4`.
    pub address: String,
    /// The vGPU it is tied to: from its `ua-gvm-<uuid>` alias, or from the manager's records
    /// ([`DomainInfo::bind_vf_records`]); `None` for a PCI device that is not a vGPU.
    pub uuid: Option<Uuid>,
    /// `managed='yes'` (libvirt binds the function to vfio-pci itself).
    pub managed: bool,
}

/// What gvm-vgpu needs to know about one domain, read from its XML.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DomainInfo {
    /// `<name>`.
    pub name: String,
    /// `<uuid>`, when present and valid.
    pub uuid: Option<Uuid>,
    /// The mdev hostdevs, in document order.
    pub hostdevs: Vec<MdevHostdev>,
    /// The PCI hostdevs (VF vGPUs among them), in document order.
    pub pci_hostdevs: Vec<PciHostdev>,
    /// The gvm metadata entries, in document order.
    pub metadata: Vec<MetaVgpu>,
    /// Host socket paths of agent channels (`<channel type='unix'>` to [`AGENT_PORT_NAME`]).
    pub agent_sockets: Vec<PathBuf>,
}

impl DomainInfo {
    /// Every vGPU the domain holds or is bound to: mdev hostdev UUIDs, VF hostdev UUIDs, then
    /// metadata-only ones.
    pub fn vgpus(&self) -> Vec<Uuid> {
        let mut out: Vec<Uuid> = Vec::new();
        let all = self
            .hostdevs
            .iter()
            .map(|h| h.uuid)
            .chain(self.pci_hostdevs.iter().filter_map(|h| h.uuid))
            .chain(self.metadata.iter().map(|m| m.uuid));
        for u in all {
            if !out.contains(&u) {
                out.push(u);
            }
        }
        out
    }

    /// The metadata entry for `uuid`, if any.
    pub fn meta(&self, uuid: &Uuid) -> Option<&MetaVgpu> {
        self.metadata.iter().find(|m| m.uuid == *uuid)
    }

    /// Whether the domain has a hostdev (mdev, or a VF tied to the UUID) for `uuid`.
    pub fn has_hostdev(&self, uuid: &Uuid) -> bool {
        self.hostdevs.iter().any(|h| h.uuid == *uuid) || self.vf_hostdev(uuid).is_some()
    }

    /// The VF hostdev tied to vGPU `uuid`, if any.
    pub fn vf_hostdev(&self, uuid: &Uuid) -> Option<&PciHostdev> {
        self.pci_hostdevs.iter().find(|h| h.uuid == Some(*uuid))
    }

    /// Tie the PCI hostdevs that carry no `ua-gvm-` alias to the VF vGPUs on record: a
    /// hostdev whose address is the VF of exactly one record becomes that vGPU. A VF named by
    /// several records (a stale one beside a later one) is left untied: the address alone
    /// cannot say which vGPU it is.
    pub fn bind_vf_records(&mut self, records: &[gvm_vf::Assignment]) {
        for h in self.pci_hostdevs.iter_mut().filter(|h| h.uuid.is_none()) {
            let mut on_vf = records.iter().filter(|r| r.vf == h.address);
            if let (Some(r), None) = (on_vf.next(), on_vf.next()) {
                h.uuid = Some(r.uuid);
            }
        }
    }
}

/// Parse a domain XML (`virsh dumpxml`, the hook's stdin, or libvirt's `<domstatus>` status
/// file, whose `<domain>` is found inside).
pub fn parse(xml: &str) -> Result<DomainInfo> {
    let doc = roxmltree::Document::parse(xml).map_err(document_error)?;
    let info = read_domain(&doc)?;
    if info.name.is_empty() {
        return Err(Error::Xml {
            what: "domain XML".into(),
            detail: "the <domain> has no <name>".into(),
        });
    }
    Ok(info)
}

/// Parse libvirt's live status file of a running domain (`/run/libvirt/qemu/<name>.xml`, a
/// `<domstatus>` around the `<domain>`), for a reader that knows the domain by the file's name.
///
/// The same reader as [`parse`], with two allowances for status files that libvirt did not
/// write itself (hand-made ones, test fixtures): a missing `<name>` leaves
/// [`DomainInfo::name`] empty, and the `gvm:` prefix ([`NAMESPACE_KEY`]) used without being
/// declared is read as [`NAMESPACE`], the only namespace libvirt gives that prefix.
pub fn parse_status_file(xml: &str) -> Result<DomainInfo> {
    match roxmltree::Document::parse(xml) {
        Ok(doc) => read_domain(&doc),
        Err(roxmltree::Error::UnknownNamespace(prefix, _)) if prefix == NAMESPACE_KEY => {
            let declared = declare_gvm_prefix(xml).ok_or_else(|| Error::Xml {
                what: "domain XML".into(),
                detail: format!("prefix '{NAMESPACE_KEY}' is used undeclared and the document has no root element to declare it on"),
            })?;
            let doc = roxmltree::Document::parse(&declared).map_err(document_error)?;
            read_domain(&doc)
        }
        Err(e) => Err(document_error(e)),
    }
}

fn document_error(e: roxmltree::Error) -> Error {
    Error::Xml {
        what: "domain XML".into(),
        detail: e.to_string(),
    }
}

/// `xml` with `xmlns:gvm="<NAMESPACE>"` added to its root element's start tag; `None` when no
/// root element is found after the prolog (XML declaration, comments, doctype).
fn declare_gvm_prefix(xml: &str) -> Option<String> {
    let mut at = 0;
    loop {
        let rest = &xml[at..];
        let trimmed = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
        at += rest.len() - trimmed.len();
        let skip = if trimmed.starts_with("<?") {
            trimmed.find("?>")? + 2
        } else if trimmed.starts_with("<!--") {
            trimmed.find("-->")? + 3
        } else if trimmed.starts_with("<!") {
            trimmed.find('>')? + 1
        } else if let Some(tag) = trimmed.strip_prefix('<') {
            let name_len = tag.find(|c: char| c.is_whitespace() || c == '>' || c == '/')?;
            let insert_at = at + 1 + name_len;
            return Some(format!(
                "{} xmlns:{NAMESPACE_KEY}=\"{NAMESPACE}\"{}",
                &xml[..insert_at],
                &xml[insert_at..]
            ));
        } else {
            return None;
        };
        at += skip;
    }
}

/// The vGPU parts of the `<domain>` that is the document's root or a child of it (a
/// `<domstatus>`), without checking that it has a name.
fn read_domain(doc: &roxmltree::Document<'_>) -> Result<DomainInfo> {
    let root = doc.root_element();
    let domain = if root.has_tag_name("domain") {
        root
    } else {
        root.children()
            .find(|n| n.has_tag_name("domain"))
            .ok_or_else(|| Error::Xml {
                what: "domain XML".into(),
                detail: format!(
                    "root element is <{}>, expected <domain>",
                    root.tag_name().name()
                ),
            })?
    };
    let mut info = DomainInfo::default();
    for child in domain.children().filter(roxmltree::Node::is_element) {
        match child.tag_name().name() {
            "name" if child.tag_name().namespace().is_none() => {
                info.name = child.text().unwrap_or_default().trim().to_string();
            }
            "uuid" if child.tag_name().namespace().is_none() => {
                info.uuid = child.text().and_then(|t| Uuid::try_parse(t.trim()).ok());
            }
            "metadata" => parse_metadata(child, &mut info.metadata)?,
            "devices" => parse_devices(child, &mut info)?,
            _ => {}
        }
    }
    Ok(info)
}

fn parse_metadata(meta: roxmltree::Node<'_, '_>, out: &mut Vec<MetaVgpu>) -> Result<()> {
    let ours = meta
        .children()
        .filter(|n| n.is_element() && n.tag_name().namespace() == Some(NAMESPACE));
    for vgpus in ours {
        for v in vgpus
            .children()
            .filter(|n| n.is_element() && n.tag_name().name() == "vgpu")
        {
            let raw = v.attribute("uuid").unwrap_or_default();
            let uuid = Uuid::try_parse(raw).map_err(|_| Error::Xml {
                what: "gvm:vgpu metadata".into(),
                detail: format!("uuid {raw:?} is not a UUID"),
            })?;
            let persistent = match v.attribute("persistent") {
                None | Some("yes") => true,
                Some("no") => false,
                Some(other) => {
                    return Err(Error::Xml {
                        what: "gvm:vgpu metadata".into(),
                        detail: format!("persistent={other:?} for {uuid}; use \"yes\" or \"no\""),
                    })
                }
            };
            let created = match v.attribute("created") {
                None | Some("no") => false,
                Some("yes") => true,
                Some(other) => {
                    return Err(Error::Xml {
                        what: "gvm:vgpu metadata".into(),
                        detail: format!("created={other:?} for {uuid}; use \"yes\" or \"no\""),
                    })
                }
            };
            out.push(MetaVgpu {
                uuid,
                type_name: v.attribute("type").map(str::to_string),
                parent: v.attribute("parent").map(str::to_string),
                mdev_type: v.attribute("mdev-type").map(str::to_string),
                persistent,
                created,
            });
        }
    }
    Ok(())
}

fn parse_devices(devices: roxmltree::Node<'_, '_>, info: &mut DomainInfo) -> Result<()> {
    for dev in devices.children().filter(roxmltree::Node::is_element) {
        match dev.tag_name().name() {
            "hostdev" if dev.attribute("type") == Some("mdev") => {
                let raw = dev
                    .children()
                    .find(|n| n.has_tag_name("source"))
                    .and_then(|s| s.children().find(|n| n.has_tag_name("address")))
                    .and_then(|a| a.attribute("uuid"))
                    .unwrap_or_default();
                let uuid = Uuid::try_parse(raw).map_err(|_| Error::Xml {
                    what: "mdev hostdev".into(),
                    detail: format!("source address uuid {raw:?} is not a UUID"),
                })?;
                info.hostdevs.push(MdevHostdev {
                    uuid,
                    model: dev.attribute("model").map(str::to_string),
                    display: dev.attribute("display").map(|d| d == "on"),
                });
            }
            "hostdev" if dev.attribute("type") == Some("pci") => {
                if let Some(h) = read_pci_hostdev(dev)? {
                    info.pci_hostdevs.push(h);
                }
            }
            "channel" if dev.attribute("type") == Some("unix") => {
                let is_agent = dev.children().any(|n| {
                    n.has_tag_name("target")
                        && n.attribute("type") == Some("virtio")
                        && n.attribute("name") == Some(AGENT_PORT_NAME)
                });
                let path = dev
                    .children()
                    .find(|n| n.has_tag_name("source"))
                    .and_then(|s| s.attribute("path"));
                if let (true, Some(path)) = (is_agent, path) {
                    info.agent_sockets.push(PathBuf::from(path));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// A PCI hostdev; `None` for one whose source is not a PCI address gvm can read (libvirt
/// writes every address it accepts, so only a foreign hand-made one is skipped), unless it
/// carries gvm's alias: then a bad address is an error, since the vGPU could not be found.
fn read_pci_hostdev(dev: roxmltree::Node<'_, '_>) -> Result<Option<PciHostdev>> {
    let alias = dev
        .children()
        .find(|n| n.has_tag_name("alias"))
        .and_then(|a| a.attribute("name"))
        .and_then(|n| n.strip_prefix(VF_ALIAS_PREFIX));
    let uuid = match alias {
        Some(raw) => Some(Uuid::try_parse(raw).map_err(|_| Error::Xml {
            what: "VF hostdev".into(),
            detail: format!("alias {VF_ALIAS_PREFIX}{raw} does not end in a UUID"),
        })?),
        None => None,
    };
    let address = dev
        .children()
        .find(|n| n.has_tag_name("source"))
        .and_then(|s| s.children().find(|n| n.has_tag_name("address")))
        .ok_or_else(|| "no <source><address/>".to_string())
        .and_then(|a| {
            pci_address_from_parts(
                a.attribute("domain"),
                a.attribute("bus"),
                a.attribute("slot"),
                a.attribute("function"),
            )
        });
    match (address, uuid) {
        (Ok(address), uuid) => Ok(Some(PciHostdev {
            address,
            uuid,
            managed: dev.attribute("managed") == Some("yes"),
        })),
        (Err(_), None) => Ok(None),
        (Err(detail), Some(uuid)) => Err(Error::Xml {
            what: format!("VF hostdev of vGPU {uuid}"),
            detail,
        }),
    }
}

/// A number as libvirt reads the attributes of a PCI address (`strtoul` base 0: `0x41` hex,
/// `017` octal, `65` decimal).
fn address_number(name: &str, text: &str, max: u32) -> std::result::Result<u32, String> {
    let t = text.trim();
    let parsed = if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        u32::from_str_radix(hex, 16)
    } else if t.len() > 1 && t.starts_with('0') {
        u32::from_str_radix(&t[1..], 8)
    } else {
        t.parse()
    };
    match parsed {
        Ok(n) if n <= max => Ok(n),
        _ => Err(format!(
            "{name}={text:?} is not a number from 0 to {max:#x}"
        )),
    }
}

/// `0000:41:00.4` from the attributes of a libvirt PCI `<address>` (`domain` may be absent,
/// meaning 0).
pub fn pci_address_from_parts(
    domain: Option<&str>,
    bus: Option<&str>,
    slot: Option<&str>,
    function: Option<&str>,
) -> std::result::Result<String, String> {
    fn need<'a>(name: &str, v: Option<&'a str>) -> std::result::Result<&'a str, String> {
        v.ok_or_else(|| format!("the address has no {name}"))
    }
    let domain = address_number("domain", domain.unwrap_or("0"), 0xffff)?;
    let bus = address_number("bus", need("bus", bus)?, 0xff)?;
    let slot = address_number("slot", need("slot", slot)?, 0x1f)?;
    let function = address_number("function", need("function", function)?, 7)?;
    Ok(format!("{domain:04x}:{bus:02x}:{slot:02x}.{function:x}"))
}

/// The libvirt `<address domain= bus= slot= function=/>` attributes of a PCI address
/// `dddd:bb:ss.f`, or an error naming it.
fn pci_address_attrs(address: &str) -> Result<String> {
    let bad = || Error::Xml {
        what: "VF address".into(),
        detail: format!("{address:?} is not a PCI address like 0000:41:00.4"),
    };
    if !gvm_vf::valid_pci_address(address) {
        return Err(bad());
    }
    let field =
        |range: std::ops::Range<usize>| u32::from_str_radix(&address[range], 16).map_err(|_| bad());
    let slot = field(8..10)?;
    if slot > 0x1f {
        return Err(bad());
    }
    Ok(format!(
        "domain='{:#06x}' bus='{:#04x}' slot='{slot:#04x}' function='{:#x}'",
        field(0..4)?,
        field(5..7)?,
        field(11..12)?
    ))
}

/// The `<hostdev>` element for VF vGPU `uuid` on PCI function `vf` (what `attach-device` and
/// `detach-device` take): `managed='no'`, since the VF is bound to NVIDIA's vendor VFIO driver
/// by the host, not by libvirt; tied to the UUID by the alias `ua-gvm-<uuid>`.
pub fn vf_hostdev_xml(uuid: &Uuid, vf: &str) -> Result<String> {
    let address = pci_address_attrs(vf)?;
    Ok(format!(
        "<hostdev mode='subsystem' type='pci' managed='no'>\n  <source>\n    <address {address}/>\n  </source>\n  <alias name='{VF_ALIAS_PREFIX}{uuid}'/>\n</hostdev>\n"
    ))
}

/// Escape text for an XML attribute value (either quote style).
pub fn escape_attr(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => s.push_str("&amp;"),
            '<' => s.push_str("&lt;"),
            '>' => s.push_str("&gt;"),
            '\'' => s.push_str("&apos;"),
            '"' => s.push_str("&quot;"),
            c => s.push(c),
        }
    }
    s
}

/// The `<hostdev>` element for an mdev vGPU (what `attach-device` and `detach-device` take).
pub fn hostdev_xml(uuid: &Uuid, display: Option<bool>) -> String {
    let display = match display {
        Some(true) => " display='on'",
        Some(false) => " display='off'",
        None => "",
    };
    format!(
        "<hostdev mode='subsystem' type='mdev' model='vfio-pci'{display}>\n  <source>\n    <address uuid='{uuid}'/>\n  </source>\n</hostdev>\n"
    )
}

/// The agent `<channel>` element whose host end is a Unix socket libvirt binds at `socket`.
pub fn agent_channel_xml(socket: &Path) -> Result<String> {
    let path = socket.to_str().ok_or_else(|| Error::Xml {
        what: "agent channel".into(),
        detail: format!("socket path {} is not valid UTF-8", socket.display()),
    })?;
    Ok(format!(
        "<channel type='unix'>\n  <source mode='bind' path='{}'/>\n  <target type='virtio' name='{AGENT_PORT_NAME}'/>\n</channel>\n",
        escape_attr(path)
    ))
}

/// The body of gvm's metadata element, as `virDomainSetMetadata` takes it: libvirt puts it in
/// [`NAMESPACE`] with prefix [`NAMESPACE_KEY`]. An empty list gives an empty `<vgpus/>`.
pub fn metadata_xml(vgpus: &[MetaVgpu]) -> String {
    let mut s = String::from("<vgpus>");
    for v in vgpus {
        s.push_str(&format!("<vgpu uuid='{}'", v.uuid));
        if let Some(t) = &v.type_name {
            s.push_str(&format!(" type='{}'", escape_attr(t)));
        }
        if let Some(p) = &v.parent {
            s.push_str(&format!(" parent='{}'", escape_attr(p)));
        }
        if let Some(m) = &v.mdev_type {
            s.push_str(&format!(" mdev-type='{}'", escape_attr(m)));
        }
        s.push_str(if v.persistent {
            " persistent='yes'"
        } else {
            " persistent='no'"
        });
        if v.created {
            s.push_str(" created='yes'");
        }
        s.push_str("/>");
    }
    s.push_str("</vgpus>");
    s
}

/// `entries` with `entry` added, replacing any entry of the same UUID.
pub fn with_entry(entries: &[MetaVgpu], entry: MetaVgpu) -> Vec<MetaVgpu> {
    let mut out: Vec<MetaVgpu> = entries
        .iter()
        .filter(|m| m.uuid != entry.uuid)
        .cloned()
        .collect();
    out.push(entry);
    out
}

/// `entries` without the entry for `uuid`.
pub fn without_entry(entries: &[MetaVgpu], uuid: &Uuid) -> Vec<MetaVgpu> {
    entries
        .iter()
        .filter(|m| m.uuid != *uuid)
        .cloned()
        .collect()
}

#[cfg(test)]
#[path = "domain_xml_tests.rs"]
mod tests;
