//! Pure parsers of the VF vGPU attributes and of PCI addresses.
//!
//! `creatable_vgpu_types` is header-less lines `ID : name` (docs/vendor-vfio.md); blank lines
//! are skipped, anything else malformed is an error naming the line, since a half-read list
//! would make the manager pick the wrong VF. Sizes are bounded: a sysfs attribute is at most
//! one page, and a longer list than [`MAX_TYPES`] is refused.

use crate::model::VgpuType;

/// The most types one `creatable_vgpu_types` may list.
pub const MAX_TYPES: usize = 256;

/// Parse `creatable_vgpu_types`; `Err` names the bad line.
pub fn parse_creatable(text: &str) -> Result<Vec<VgpuType>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some((id, name)) = line.split_once(':') else {
            return Err(format!("line {}: {line:?} is not `ID : name`", n + 1));
        };
        let id: u32 = id
            .trim()
            .parse()
            .map_err(|_| format!("line {}: {:?} is not a decimal type ID", n + 1, id.trim()))?;
        let name = name.trim();
        if id == 0 || name.is_empty() || name.len() > 64 {
            return Err(format!(
                "line {}: {line:?} needs a non-zero ID and a name of 1 to 64 bytes",
                n + 1
            ));
        }
        if out.len() == MAX_TYPES {
            return Err(format!("more than {MAX_TYPES} types"));
        }
        out.push(VgpuType {
            id,
            name: name.to_string(),
        });
    }
    Ok(out)
}

/// Parse `current_vgpu_type` (a decimal ID, `0` for none).
pub fn parse_current(text: &str) -> Result<u32, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("{:?} is not a decimal type ID", text.trim()))
}

/// Whether `s` is a full PCI address `dddd:bb:ss.f` (hex digits, function 0-7).
pub fn valid_pci_address(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && [0, 1, 2, 3, 5, 6, 8, 9]
            .iter()
            .all(|&i| b[i].is_ascii_hexdigit())
        && (b'0'..=b'7').contains(&b[11])
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
