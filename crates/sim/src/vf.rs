//! Simulated NVIDIA SR-IOV GPUs: vGPUs on virtual functions (docs/vendor-vfio.md), pure model.
//!
//! On Ada, Hopper and Blackwell GPUs a vGPU is an SR-IOV *virtual function* (VF) of the GPU,
//! not an mdev. Writing a count to the *physical function*'s (PF's) `sriov_numvfs` makes that
//! many VFs; each VF has an `nvidia/` directory whose `creatable_vgpu_types` lists what it could
//! hold now, and writing a type ID to its `current_vgpu_type` makes the VF a vGPU of that type
//! (`0` removes it). What is creatable depends on the GPU's framebuffer already handed out and
//! on its mode: *homogeneous* (the default: once one VF has a type, its siblings offer only
//! that type) or *heterogeneous* (mixed sizes, each vGPU at a *placement* in the framebuffer,
//! chosen through `placement_id`). Heterogeneous mode is an NVML setting, not a sysfs file; the
//! simulator sets it through its control file ([`SriovGpus::set_heterogeneous`]).
//!
//! Each store here follows docs/vendor-vfio.md, which says where every rule comes from. No
//! real vGPU host was available: the rules that come from Linux's PCI core (`sriov_numvfs`)
//! are the kernel's; the errnos of the `nvidia/` files are the ones that page settles, most of
//! them **ours** (NVIDIA documents that these writes fail, not with which errno), and so are
//! the type IDs, the VF addresses and the placement arithmetic. Each such rule says so below.
//! The tags \[UG\] (NVIDIA's vGPU user guide), \[NVML\] (NVML's reference) and \[OPS\] (an
//! operator's notes) name the sources listed in docs/vendor-vfio.md, among others.
//!
//! No I/O: the path layout is in [`crate::tree`], the control commands in [`crate::host`].

use crate::error::FsError;
use crate::host::parse_kstrtoul;

/// One GiB of framebuffer is one placement slot here (**ours**: NVML reports a type's
/// `placementSize` in slots without saying how large a slot is).
pub const SLOTS_PER_GPU: u32 = 80;

/// `sriov_totalvfs` of every simulated PF (**ours**; enough for the smallest type, 4 GiB).
pub const TOTAL_VFS: u16 = 20;

/// The PCI bus of the first PF; PF `i` is `0000:<0x41 + i>:00.0`.
pub const FIRST_PF_BUS: u32 = 0x41;

/// The routing-ID offset of VF 0 from its PF (**ours**, matching the `0000:41:00.4` of the
/// examples in docs/vendor-vfio.md); VFs follow with stride 1: `00.4`…`00.7`, `01.0`, ….
pub const FIRST_VF_OFFSET: u32 = 4;

/// The most bytes `vgpu_params` takes (a sysfs store is at most one page, less its NUL).
pub const MAX_PARAMS: usize = 4095;

/// One vGPU type the simulated GPU offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VfTypeSpec {
    /// The ID written to `current_vgpu_type`.
    pub id: u32,
    /// The name listed in `creatable_vgpu_types`.
    pub name: &'static str,
    /// Framebuffer in GiB, which is also its placement size in slots.
    pub slots: u32,
}

impl VfTypeSpec {
    /// The most vGPUs of this type one GPU holds (the catalog's `max_instances`).
    pub fn max_instances(&self) -> u32 {
        SLOTS_PER_GPU / self.slots
    }

    /// Every placement of this type: slot offsets aligned to its size (**ours**).
    pub fn placements(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.max_instances()).map(|i| i * self.slots)
    }
}

/// The types of the simulated H100-like GPU: the C-series profiles of
/// `mdev-types/H100-80GB.toml`. The IDs are **ours**: NVIDIA renumbers them between driver
/// releases; 1047 for H100-20C is the example docs/vendor-vfio.md uses.
pub const H100_TYPES: [VfTypeSpec; 8] = [
    vf_type(1042, "NVIDIA H100-4C", 4),
    vf_type(1043, "NVIDIA H100-5C", 5),
    vf_type(1044, "NVIDIA H100-8C", 8),
    vf_type(1045, "NVIDIA H100-10C", 10),
    vf_type(1046, "NVIDIA H100-16C", 16),
    vf_type(1047, "NVIDIA H100-20C", 20),
    vf_type(1048, "NVIDIA H100-40C", 40),
    vf_type(1049, "NVIDIA H100-80C", 80),
];

const fn vf_type(id: u32, name: &'static str, slots: u32) -> VfTypeSpec {
    VfTypeSpec { id, name, slots }
}

/// The type with this ID.
pub fn type_by_id(id: u32) -> Option<&'static VfTypeSpec> {
    H100_TYPES.iter().find(|t| t.id == id)
}

/// A vGPU set on a VF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VfVgpu {
    /// Its type.
    pub type_id: u32,
    /// Its first slot.
    pub placement: u32,
}

impl VfVgpu {
    fn slots(&self) -> std::ops::Range<u32> {
        let size = type_by_id(self.type_id).map_or(0, |t| t.slots);
        self.placement..self.placement + size
    }
}

/// One enabled VF.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VfSlot {
    /// Its vGPU, if `current_vgpu_type` is set.
    pub vgpu: Option<VfVgpu>,
    /// A `placement_id` written for the next `current_vgpu_type` write.
    pub placement_request: Option<u32>,
    /// `vgpu_params`.
    pub params: String,
    /// A VM holds the VF open (control command `vf-hold`).
    pub held: bool,
}

/// One simulated SR-IOV GPU (a PF).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SriovGpu {
    /// Its PCI bus.
    pub bus: u32,
    /// Heterogeneous (mixed-size) mode is on.
    pub heterogeneous: bool,
    /// Its enabled VFs, by index (`sriov_numvfs` of them).
    pub vfs: Vec<VfSlot>,
}

impl SriovGpu {
    /// Its PCI address.
    pub fn address(&self) -> String {
        format!("0000:{:02x}:00.0", self.bus)
    }

    /// The address of its VF `index`.
    pub fn vf_address(&self, index: usize) -> String {
        let devfn = FIRST_VF_OFFSET as usize + index;
        format!("0000:{:02x}:{:02x}.{}", self.bus, devfn >> 3, devfn & 7)
    }

    /// The placements of `t` whose slots no vGPU of this GPU uses.
    pub fn free_placements(&self, t: &VfTypeSpec) -> Vec<u32> {
        let used: Vec<std::ops::Range<u32>> = self
            .vfs
            .iter()
            .filter_map(|v| v.vgpu)
            .map(|g| g.slots())
            .collect();
        t.placements()
            .filter(|p| used.iter().all(|u| u.end <= *p || u.start >= p + t.slots))
            .collect()
    }

    /// `creatable_vgpu_types` of VF `vf`: nothing on a VF that has a vGPU; otherwise every
    /// type with a free placement, narrowed in homogeneous mode to the type already on the GPU
    /// (doc \[UG\] \[NVML\]: "the creatable list will be restricted to whatever vGPU type is
    /// already running"). Empty for a VF that is not enabled.
    pub fn creatable(&self, vf: usize) -> Vec<&'static VfTypeSpec> {
        let Some(slot) = self.vfs.get(vf) else {
            return Vec::new();
        };
        if slot.vgpu.is_some() {
            return Vec::new();
        }
        let running = self.vfs.iter().find_map(|v| v.vgpu).map(|g| g.type_id);
        H100_TYPES
            .iter()
            .filter(|t| self.heterogeneous || running.is_none_or(|r| r == t.id))
            .filter(|t| !self.free_placements(t).is_empty())
            .collect()
    }

    fn has_vgpus(&self) -> bool {
        self.vfs.iter().any(|v| v.vgpu.is_some())
    }
}

/// Every simulated SR-IOV GPU of the host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SriovGpus {
    gpus: Vec<SriovGpu>,
}

/// Parse a decimal `u32` like the kernel's `kstrtou32(buf, 10, …)`: an optional `+`, digits,
/// one trailing newline; `EINVAL` for anything else, `ERANGE` when it overflows.
fn parse_u32(path: &str, data: &[u8]) -> Result<u32, FsError> {
    let text = std::str::from_utf8(data.strip_suffix(b"\n").unwrap_or(data))
        .map_err(|_| FsError::invalid(path, "write a decimal number"))?;
    let digits = text.strip_prefix('+').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FsError::invalid(
            path,
            format!("{text:?} is not a decimal number"),
        ));
    }
    digits
        .parse()
        .map_err(|_| FsError::out_of_range(path, format!("{text} does not fit in 32 bits")))
}

fn names(types: &[&VfTypeSpec]) -> String {
    if types.is_empty() {
        return "none".to_string();
    }
    types
        .iter()
        .map(|t| format!("{} ({})", t.id, t.name))
        .collect::<Vec<_>>()
        .join(", ")
}

impl SriovGpus {
    /// `count` GPUs with no VFs enabled, in homogeneous mode (as after boot).
    pub fn new(count: u32) -> Self {
        SriovGpus {
            gpus: (0..count)
                .map(|i| SriovGpu {
                    bus: FIRST_PF_BUS + i,
                    heterogeneous: false,
                    vfs: Vec::new(),
                })
                .collect(),
        }
    }

    /// The GPUs, in address order.
    pub fn gpus(&self) -> &[SriovGpu] {
        &self.gpus
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.gpus.is_empty()
    }

    /// The index of the PF at `address`.
    pub fn pf(&self, address: &str) -> Option<usize> {
        self.gpus.iter().position(|g| g.address() == address)
    }

    /// The (GPU, VF index) of the enabled VF at `address`.
    pub fn vf(&self, address: &str) -> Option<(usize, usize)> {
        let (bus, slot, func) = split_address(address)?;
        let gpu = self.gpus.iter().position(|g| g.bus == bus)?;
        let index = usize::try_from((slot << 3 | func).checked_sub(FIRST_VF_OFFSET)?).ok()?;
        (index < self.gpus.get(gpu)?.vfs.len()).then_some((gpu, index))
    }

    fn slot(&self, gpu: usize, vf: usize) -> Option<&VfSlot> {
        self.gpus.get(gpu)?.vfs.get(vf)
    }

    fn slot_mut(&mut self, path: &str, gpu: usize, vf: usize) -> Result<&mut VfSlot, FsError> {
        self.gpus
            .get_mut(gpu)
            .and_then(|g| g.vfs.get_mut(vf))
            .ok_or_else(|| FsError::not_found(path))
    }

    /// The store of `<PF>/sriov_numvfs`, as Linux's `sriov_numvfs_store` does it: not a
    /// number (`kstrtou16`, any base) → `EINVAL`; above `sriov_totalvfs` → `ERANGE`; the count
    /// already enabled → nothing; a non-zero count while VFs are enabled → `EBUSY`. `0`
    /// disables the VFs; the simulated vGPU manager refuses that with `EBUSY` while a VF has a
    /// vGPU (**ours**: what NVIDIA's driver does then is not documented). Enabling or disabling
    /// clears heterogeneous mode (doc \[UG\] \[NVML\]: it must be set again after the VFs are
    /// re-enabled).
    pub fn set_num_vfs(&mut self, path: &str, gpu: usize, data: &[u8]) -> Result<(), FsError> {
        let n = parse_kstrtoul(data)
            .and_then(|n| u16::try_from(n).ok())
            .ok_or_else(|| FsError::invalid(path, "write a number of VFs"))?;
        if n > TOTAL_VFS {
            return Err(FsError::out_of_range(
                path,
                format!("{n} VFs asked, sriov_totalvfs is {TOTAL_VFS}"),
            ));
        }
        let g = self
            .gpus
            .get_mut(gpu)
            .ok_or_else(|| FsError::not_found(path))?;
        let current = g.vfs.len();
        if usize::from(n) == current {
            return Ok(());
        }
        if n == 0 {
            if g.has_vgpus() {
                return Err(FsError::busy(
                    path,
                    "VFs of this GPU carry vGPUs: write 0 to each VF's nvidia/current_vgpu_type first",
                ));
            }
        } else if current != 0 {
            return Err(FsError::busy(
                path,
                format!("{current} VFs already enabled: write 0 first, then {n}"),
            ));
        }
        g.vfs = vec![VfSlot::default(); usize::from(n)];
        g.heterogeneous = false;
        Ok(())
    }

    /// `current_vgpu_type` of a VF: its type ID, `0` when it has no vGPU.
    pub fn current_type(&self, gpu: usize, vf: usize) -> u32 {
        self.slot(gpu, vf)
            .and_then(|s| s.vgpu)
            .map_or(0, |g| g.type_id)
    }

    /// `creatable_vgpu_types` of a VF as the file reads: `ID : name` lines, the ID right-aligned
    /// in eight columns like the example in docs/vendor-vfio.md.
    pub fn creatable_text(&self, gpu: usize, vf: usize) -> String {
        self.gpus
            .get(gpu)
            .map(|g| g.creatable(vf))
            .unwrap_or_default()
            .iter()
            .map(|t| format!("{:>8} : {}\n", t.id, t.name))
            .collect()
    }

    /// `placement_id` of a VF: its vGPU's placement, else the placement written for the next
    /// create, else an empty line (**ours**).
    pub fn placement_text(&self, gpu: usize, vf: usize) -> String {
        let slot = self.slot(gpu, vf);
        match slot
            .and_then(|s| s.vgpu.map(|g| g.placement))
            .or_else(|| slot.and_then(|s| s.placement_request))
        {
            Some(p) => format!("{p}\n"),
            None => "\n".to_string(),
        }
    }

    /// `vgpu_params` of a VF.
    pub fn params_text(&self, gpu: usize, vf: usize) -> String {
        let params = self.slot(gpu, vf).map_or("", |s| s.params.as_str());
        format!("{params}\n")
    }

    /// The store of `<VF>/nvidia/current_vgpu_type` (errnos as docs/vendor-vfio.md settles them):
    /// not a decimal number → `EINVAL` (**ours**; `ERANGE` on overflow, as `kstrtou32`);
    /// `0` removes the vGPU, refused with `EPERM` while a VM holds the VF (tool \[OPS\]);
    /// an ID while the VF has a vGPU or a VM holds it → `EBUSY` (**ours**); an ID not in the
    /// VF's `creatable_vgpu_types`, or whose written `placement_id` is not free for it →
    /// `EINVAL` (**ours**). Without a written placement the vGPU takes the lowest free one.
    pub fn set_type(
        &mut self,
        path: &str,
        gpu: usize,
        vf: usize,
        data: &[u8],
    ) -> Result<(), FsError> {
        let id = parse_u32(path, data)?;
        let g = self.gpus.get(gpu).ok_or_else(|| FsError::not_found(path))?;
        let slot = g.vfs.get(vf).ok_or_else(|| FsError::not_found(path))?;
        if id == 0 {
            if slot.held {
                return Err(FsError::NotPermitted {
                    path: path.to_string(),
                    reason: "a VM holds this VF: stop the VM before removing its vGPU".into(),
                });
            }
            *self.slot_mut(path, gpu, vf)? = VfSlot::default();
            return Ok(());
        }
        if let Some(cur) = slot.vgpu {
            return Err(FsError::busy(
                path,
                format!(
                    "the VF already carries vGPU type {}: write 0 first (the VM must be stopped)",
                    cur.type_id
                ),
            ));
        }
        let creatable = g.creatable(vf);
        let Some(t) = creatable.iter().find(|t| t.id == id) else {
            let why = if type_by_id(id).is_none() {
                "no such vGPU type on this GPU"
            } else if g.heterogeneous {
                "no free placement for it on this GPU"
            } else {
                "the GPU is full for it, or another type runs on it in homogeneous mode"
            };
            return Err(FsError::invalid(
                path,
                format!("type {id}: {why}; creatable now: {}", names(&creatable)),
            ));
        };
        let free = g.free_placements(t);
        let placement = match slot.placement_request {
            Some(p) if free.contains(&p) => p,
            Some(p) => {
                return Err(FsError::invalid(
                    path,
                    format!(
                        "placement_id {p} is not free for {}; free placements: {}",
                        t.name,
                        list(&free)
                    ),
                ))
            }
            // Creatable means at least one placement is free.
            None => *free.first().ok_or_else(|| {
                FsError::invalid(path, format!("no free placement for {}", t.name))
            })?,
        };
        let slot = self.slot_mut(path, gpu, vf)?;
        slot.vgpu = Some(VfVgpu {
            type_id: id,
            placement,
        });
        slot.placement_request = None;
        Ok(())
    }

    /// The store of `<VF>/nvidia/placement_id`, written before `current_vgpu_type` (doc \[UG\]):
    /// not a decimal number, or not a slot of this GPU → `EINVAL`; while the VF has a vGPU or a
    /// VM holds it → `EBUSY` (**ours**). Whether it suits the type is checked when the type is
    /// written. Accepted in both modes (NVML lists placements for both).
    pub fn set_placement(
        &mut self,
        path: &str,
        gpu: usize,
        vf: usize,
        data: &[u8],
    ) -> Result<(), FsError> {
        let p = parse_u32(path, data)?;
        let slot = self.slot_mut(path, gpu, vf)?;
        if slot.vgpu.is_some() || slot.held {
            return Err(FsError::busy(
                path,
                "the VF carries a vGPU: write 0 to current_vgpu_type first",
            ));
        }
        if p >= SLOTS_PER_GPU {
            return Err(FsError::invalid(
                path,
                format!("placements of this GPU are 0..{}", SLOTS_PER_GPU - 1),
            ));
        }
        slot.placement_request = Some(p);
        Ok(())
    }

    /// The store of `<VF>/nvidia/vgpu_params`: free-form text for the vGPU, set before the VM
    /// starts (doc \[UG\]). Without a vGPU → `EINVAL`, while a VM holds the VF → `EBUSY`, longer
    /// than a page or not UTF-8 → `EINVAL` (all **ours**). Cleared when the vGPU is removed.
    pub fn set_params(
        &mut self,
        path: &str,
        gpu: usize,
        vf: usize,
        data: &[u8],
    ) -> Result<(), FsError> {
        let slot = self.slot_mut(path, gpu, vf)?;
        if slot.vgpu.is_none() {
            return Err(FsError::invalid(
                path,
                "the VF has no vGPU: write its type to current_vgpu_type first",
            ));
        }
        if slot.held {
            return Err(FsError::busy(
                path,
                "a VM holds this VF: stop it before changing vgpu_params",
            ));
        }
        if data.len() > MAX_PARAMS {
            return Err(FsError::invalid(
                path,
                format!("at most {MAX_PARAMS} bytes"),
            ));
        }
        let text = std::str::from_utf8(data.strip_suffix(b"\n").unwrap_or(data))
            .map_err(|_| FsError::invalid(path, "parameters are text"))?;
        slot.params = text.to_string();
        Ok(())
    }

    /// Turn heterogeneous mode of PF `pf` on or off, as NVML's
    /// `nvmlDeviceSetVgpuHeterogeneousMode` does: only while no VF of the GPU has a vGPU
    /// (`EBUSY` otherwise, **ours**). The VFs must be enabled first, since enabling them clears
    /// the mode (doc \[UG\] \[NVML\]); refused with `EINVAL` otherwise (the simulator's rule, so a
    /// setting is not silently lost).
    pub fn set_heterogeneous(&mut self, pf: &str, on: bool) -> Result<(), FsError> {
        let object = format!("SR-IOV PF {pf}");
        let i = self.pf(pf).ok_or_else(|| FsError::not_found(&object))?;
        let g = &mut self.gpus[i];
        if g.vfs.is_empty() {
            return Err(FsError::invalid(
                &object,
                "no VFs enabled: write sriov_numvfs first (enabling VFs clears the mode)",
            ));
        }
        if g.has_vgpus() {
            return Err(FsError::busy(
                &object,
                "VFs of this GPU carry vGPUs: remove them before changing the mode",
            ));
        }
        g.heterogeneous = on;
        Ok(())
    }

    /// A VM opens VF `vf` (control command `vf-hold`): only a VF with a vGPU can be opened
    /// (`EINVAL`), and by one VM at a time (`EBUSY`).
    pub fn hold(&mut self, vf: &str) -> Result<(), FsError> {
        let object = format!("VF {vf}");
        let (g, i) = self.vf(vf).ok_or_else(|| FsError::not_found(&object))?;
        let slot = self.slot_mut(&object, g, i)?;
        if slot.vgpu.is_none() {
            return Err(FsError::invalid(
                &object,
                "the VF has no vGPU: write its type to current_vgpu_type first",
            ));
        }
        if slot.held {
            return Err(FsError::busy(&object, "a VM holds it already"));
        }
        slot.held = true;
        Ok(())
    }

    /// The VM of VF `vf` closes it (control command `vf-release`); `EINVAL` if none held it.
    pub fn release(&mut self, vf: &str) -> Result<(), FsError> {
        let object = format!("VF {vf}");
        let (g, i) = self.vf(vf).ok_or_else(|| FsError::not_found(&object))?;
        let slot = self.slot_mut(&object, g, i)?;
        if !slot.held {
            return Err(FsError::invalid(&object, "no VM holds it"));
        }
        slot.held = false;
        Ok(())
    }

    /// What a host reboot does (control command `vf-reset`): every VF, vGPU, hold and
    /// heterogeneous setting is gone (doc \[UG\]: VFs are lost on reboot).
    pub fn reset(&mut self) {
        for g in &mut self.gpus {
            g.vfs.clear();
            g.heterogeneous = false;
        }
    }
}

fn list(items: &[u32]) -> String {
    if items.is_empty() {
        return "none".to_string();
    }
    items
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// (bus, slot, function) of a full PCI address `0000:bb:ss.f`.
fn split_address(address: &str) -> Option<(u32, u32, u32)> {
    let rest = address.strip_prefix("0000:")?;
    let (bus, rest) = rest.split_once(':')?;
    let (slot, func) = rest.split_once('.')?;
    let hex = |s: &str, len: usize| {
        // Lower case only, as sysfs names them.
        (s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| u32::from_str_radix(s, 16).ok())
        .flatten()
    };
    let func = hex(func, 1).filter(|f| *f < 8)?;
    Some((hex(bus, 2)?, hex(slot, 2).filter(|s| *s < 32)?, func))
}

#[cfg(test)]
#[path = "vf_tests.rs"]
mod tests;
