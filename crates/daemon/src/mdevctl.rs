//! mdevctl's persistent definition format, for `import-mdevctl`.
//!
//! mdevctl keeps one JSON file per device at `/etc/mdevctl.d/<parent>/<uuid>`:
//! `{"mdev_type": "nvidia-558", "start": "auto"|"manual", "attrs": [...]}`.
//! Vendor attributes are not imported (the daemon writes none); a definition
//! carrying them is still imported and the report says so in the log.

use serde::Deserialize;

/// The fields of an mdevctl definition the daemon uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdevctlConfig {
    /// Kernel mdev type id.
    pub mdev_type: String,
    /// `start: auto`.
    pub autostart: bool,
}

#[derive(Deserialize)]
struct Raw {
    mdev_type: String,
    #[serde(default)]
    start: Option<String>,
}

/// Parse one mdevctl definition file.
pub fn parse(text: &str) -> Result<MdevctlConfig, String> {
    let raw: Raw =
        serde_json::from_str(text).map_err(|e| format!("not an mdevctl definition: {e}"))?;
    if raw.mdev_type.is_empty() || raw.mdev_type.contains('/') {
        return Err(format!("bad mdev_type {:?}", raw.mdev_type));
    }
    let autostart = match raw.start.as_deref() {
        None | Some("manual") => false,
        Some("auto") => true,
        Some(other) => return Err(format!("unknown start mode {other:?} (auto or manual)")),
    };
    Ok(MdevctlConfig {
        mdev_type: raw.mdev_type,
        autostart,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mdevctl_definitions_parse() {
        let c = parse(r#"{"mdev_type":"gvmsim-1","start":"auto","attrs":[]}"#);
        assert_eq!(
            c,
            Ok(MdevctlConfig {
                mdev_type: "gvmsim-1".into(),
                autostart: true
            })
        );
        assert_eq!(
            parse(r#"{"mdev_type":"x-1"}"#).map(|c| c.autostart),
            Ok(false)
        );
        assert!(parse(r#"{"mdev_type":"x-1","start":"sometimes"}"#).is_err());
        assert!(parse("{}").is_err());
        assert!(parse(r#"{"mdev_type":"../x"}"#).is_err());
    }
}
