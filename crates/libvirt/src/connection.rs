//! A thin, typed layer over one libvirt connection (libvirt's C API, loaded at run time by
//! `sys`: a host without libvirt gets [`Error::LibraryMissing`] here, not a binary that
//! does not start).
//!
//! libvirt manages domains (VMs) through a daemon reached by URI: `qemu:///system` for the
//! system instance (root), `qemu:///session` for a user's own. [`resolve_uri`] picks the URI the
//! way `virsh` does (`--connect`, then `LIBVIRT_DEFAULT_URI`, then [`DEFAULT_URI`]).
//!
//! Device changes take *impact* flags: [`Apply::config`] edits the persistent definition (what
//! the domain has at its next start), [`Apply::live`] the running instance; neither means "the
//! current state" (live when running, config otherwise); `virDomainAttachDeviceFlags` is
//! always called with them, never `virDomainAttachDevice`.
//!
//! Everything here blocks on the libvirt daemon; no method runs libvirt's event loop (see
//! [`crate::watch`](mod@crate::watch) for that).

use std::fmt;

use uuid::Uuid;

use crate::domain_xml::{self, DomainInfo, MetaVgpu, NAMESPACE, NAMESPACE_KEY};
use crate::error::{Error, LibvirtError, Result};
use crate::events::{DomainBinding, DomainState};
use crate::sys::{self, Domain};

pub use crate::uri::{resolve_uri, uri_from_env, DEFAULT_URI, URI_ENV};

/// Which definition of a domain a change applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Apply {
    /// The persistent definition (`--config`).
    pub config: bool,
    /// The running instance (`--live`).
    pub live: bool,
}

impl Apply {
    /// Only the persistent definition.
    pub const CONFIG: Apply = Apply {
        config: true,
        live: false,
    };
    /// Only the running instance.
    pub const LIVE: Apply = Apply {
        config: false,
        live: true,
    };
    /// Both.
    pub const BOTH: Apply = Apply {
        config: true,
        live: true,
    };

    /// libvirt's `virDomainModificationImpact` flags (0 = current).
    pub fn flags(self) -> u32 {
        let mut f = 0;
        if self.config {
            f |= sys::VIR_DOMAIN_AFFECT_CONFIG;
        }
        if self.live {
            f |= sys::VIR_DOMAIN_AFFECT_LIVE;
        }
        f
    }
}

/// An open libvirt connection; closed on drop.
pub struct Connection {
    conn: sys::Connect,
    uri: String,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("uri", &self.uri)
            .finish()
    }
}

impl Connection {
    /// Open a read-write connection to `uri`. The first call of the process loads libvirt's
    /// client library: [`Error::LibraryMissing`] when it cannot.
    pub fn open(uri: &str) -> Result<Connection> {
        let conn = sys::api()?.open(uri).map_err(|source| Error::Connect {
            uri: uri.to_string(),
            source,
        })?;
        Ok(Connection {
            conn,
            uri: uri.to_string(),
        })
    }

    /// The URI this connection was opened with.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The underlying handle, for the watch's callbacks.
    pub(crate) fn handle(&self) -> &sys::Connect {
        &self.conn
    }

    /// Look a domain up by name.
    pub(crate) fn domain(&self, name: &str) -> Result<Domain> {
        self.conn.lookup_domain(name).map_err(|e| {
            if e.code == LibvirtError::NO_DOMAIN {
                Error::DomainNotFound {
                    uri: self.uri.clone(),
                    domain: name.to_string(),
                }
            } else {
                Error::Domain {
                    op: "look the domain up".into(),
                    domain: name.to_string(),
                    source: e,
                }
            }
        })
    }

    /// The domain's state.
    pub fn state(&self, name: &str) -> Result<DomainState> {
        let dom = self.domain(name)?;
        state_of(&dom, name)
    }

    /// The domain's XML: the persistent definition when `inactive`, else the current one.
    pub fn xml(&self, name: &str, inactive: bool) -> Result<String> {
        let dom = self.domain(name)?;
        xml_of(&dom, name, inactive)
    }

    /// The domain's XML, parsed.
    pub fn info(&self, name: &str, inactive: bool) -> Result<DomainInfo> {
        domain_xml::parse(&self.xml(name, inactive)?)
    }

    /// Pause the running domain's vCPUs (`virDomainSuspend`, as `virsh suspend`). libvirt
    /// refuses it for a domain that is not running; suspending one already paused succeeds
    /// and changes nothing.
    pub fn suspend(&self, name: &str) -> Result<()> {
        let dom = self.domain(name)?;
        dom.suspend().map_err(|source| Error::Domain {
            op: "suspend (pause) it".into(),
            domain: name.to_string(),
            source,
        })
    }

    /// Resume a paused domain (`virDomainResume`, as `virsh resume`). libvirt refuses it for
    /// a domain that is not paused.
    pub fn resume(&self, name: &str) -> Result<()> {
        let dom = self.domain(name)?;
        dom.resume().map_err(|source| Error::Domain {
            op: "resume it".into(),
            domain: name.to_string(),
            source,
        })
    }

    /// `virDomainAttachDeviceFlags` with `xml` (a `<hostdev>`, a `<channel>`, …).
    pub fn attach_device(&self, name: &str, xml: &str, apply: Apply) -> Result<()> {
        let dom = self.domain(name)?;
        dom.attach_device(xml, apply.flags())
            .map_err(|source| Error::Domain {
                op: format!("attach a device ({})", first_line(xml)),
                domain: name.to_string(),
                source,
            })
    }

    /// `virDomainDetachDeviceFlags` with `xml`.
    pub fn detach_device(&self, name: &str, xml: &str, apply: Apply) -> Result<()> {
        let dom = self.domain(name)?;
        dom.detach_device(xml, apply.flags())
            .map_err(|source| Error::Domain {
                op: format!("detach a device ({})", first_line(xml)),
                domain: name.to_string(),
                source,
            })
    }

    /// Replace gvm's metadata element with `entries` (removing the element when empty).
    pub fn set_vgpu_metadata(&self, name: &str, entries: &[MetaVgpu], apply: Apply) -> Result<()> {
        let dom = self.domain(name)?;
        let body = (!entries.is_empty()).then(|| domain_xml::metadata_xml(entries));
        let key = body.as_ref().map(|_| NAMESPACE_KEY);
        dom.set_metadata(
            sys::VIR_DOMAIN_METADATA_ELEMENT,
            body.as_deref(),
            key,
            Some(NAMESPACE),
            apply.flags(),
        )
        .map_err(|source| Error::Domain {
            op: "write the gvm-vgpu metadata".into(),
            domain: name.to_string(),
            source,
        })
    }

    /// Every domain (running or only defined) with the vGPUs bound to it, sorted by name.
    /// Active domains are read from their live XML, others from their definition.
    pub fn bindings(&self) -> Result<Vec<DomainBinding>> {
        let domains = self
            .conn
            .list_all_domains(0)
            .map_err(|source| Error::Libvirt {
                op: "list domains".into(),
                uri: self.uri.clone(),
                source,
            })?;
        let mut out = Vec::with_capacity(domains.len());
        for dom in domains {
            match binding_of(&dom) {
                Ok(b) => out.push(b),
                // Undefined between listing and reading.
                Err(e) if e.libvirt_code() == Some(LibvirtError::NO_DOMAIN) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.domain.cmp(&b.domain));
        Ok(out)
    }

    /// The domain(s) holding or bound to `uuid`.
    pub fn domains_of(&self, uuid: &Uuid) -> Result<Vec<String>> {
        Ok(self
            .bindings()?
            .into_iter()
            .filter(|b| b.vgpus().contains(uuid))
            .map(|b| b.domain)
            .collect())
    }
}

/// Read one domain's binding.
pub(crate) fn binding_of(dom: &Domain) -> Result<DomainBinding> {
    let name = dom.name().map_err(|source| Error::Domain {
        op: "read its name".into(),
        domain: "?".into(),
        source,
    })?;
    let state = state_of(dom, &name)?;
    let xml = xml_of(dom, &name, !state.is_active())?;
    Ok(DomainBinding {
        info: domain_xml::parse(&xml)?,
        domain: name,
        state,
    })
}

fn state_of(dom: &Domain, name: &str) -> Result<DomainState> {
    dom.state()
        .map(DomainState::from_raw)
        .map_err(|source| Error::Domain {
            op: "read its state".into(),
            domain: name.to_string(),
            source,
        })
}

fn xml_of(dom: &Domain, name: &str, inactive: bool) -> Result<String> {
    let flags = if inactive {
        sys::VIR_DOMAIN_XML_INACTIVE
    } else {
        0
    };
    dom.xml_desc(flags).map_err(|source| Error::Domain {
        op: "read its XML".into(),
        domain: name.to_string(),
        source,
    })
}

fn first_line(xml: &str) -> &str {
    xml.lines().next().unwrap_or_default().trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_precedence_is_flag_then_env_then_default() {
        assert_eq!(
            resolve_uri(Some("test:///default"), Some("qemu:///session")),
            "test:///default"
        );
        assert_eq!(
            resolve_uri(None, Some("qemu:///session")),
            "qemu:///session"
        );
        assert_eq!(resolve_uri(Some(""), Some("")), DEFAULT_URI);
        assert_eq!(resolve_uri(None, None), "qemu:///system");
    }

    #[test]
    fn impact_flags_match_libvirt() {
        assert_eq!(Apply::default().flags(), 0);
        assert_eq!(Apply::CONFIG.flags(), 2);
        assert_eq!(Apply::LIVE.flags(), 1);
        assert_eq!(Apply::BOTH.flags(), 3);
    }

    #[test]
    fn states_map_from_libvirt_numbers() {
        assert_eq!(DomainState::from_raw(1), DomainState::Running);
        assert_eq!(DomainState::from_raw(3), DomainState::Paused);
        assert_eq!(DomainState::from_raw(5), DomainState::ShutOff);
        assert_eq!(DomainState::from_raw(99), DomainState::Other(99));
        assert!(DomainState::Paused.is_active());
        assert!(!DomainState::ShutOff.is_active());
    }
}
