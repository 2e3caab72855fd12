//! PCI addresses as Linux writes them (`0000:3c:00.0`) and as NVML writes them
//! (`00000000:3C:00.0`).

/// The Linux form of a PCI address in any of the forms NVML reads or writes
/// (`domain:bus:device.function`, hexadecimal, any width and case), or `None`.
pub fn normalise_pci(address: &str) -> Option<String> {
    let hex = |t: &str, max: u32| {
        let ok = !t.is_empty() && t.len() <= 8 && t.bytes().all(|b| b.is_ascii_hexdigit());
        ok.then(|| u32::from_str_radix(t, 16).ok())
            .flatten()
            .filter(|v| *v <= max)
    };
    let (domain, rest) = address.trim().split_once(':')?;
    let (bus, rest) = rest.split_once(':')?;
    let (device, function) = rest.split_once('.')?;
    Some(format!(
        "{:04x}:{:02x}:{:02x}.{:x}",
        hex(domain, 0xffff)?,
        hex(bus, 0xff)?,
        hex(device, 0x1f)?,
        hex(function, 0x7)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvml_and_linux_forms_meet() {
        assert_eq!(
            normalise_pci("00000000:3C:00.0").as_deref(),
            Some("0000:3c:00.0")
        );
        assert_eq!(
            normalise_pci("0000:3c:00.0").as_deref(),
            Some("0000:3c:00.0")
        );
        assert_eq!(normalise_pci("3c:00.0"), None);
        assert_eq!(normalise_pci("0000:3c:20.0"), None);
        assert_eq!(normalise_pci("0000:3g:00.0"), None);
    }
}
