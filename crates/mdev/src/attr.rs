//! Reading sysfs attributes, directories and links, with errors that name the path.
//!
//! sysfs attributes are small text files ending in a newline; they are read
//! whole and trimmed. Optional attributes may be missing (`None`); required ones
//! missing are [`Error::MissingAttribute`]. Parsing is kept in pure functions.

use std::fs;
use std::io;
use std::path::Path;

use crate::error::{Error, Result};

fn read_error(path: &Path, source: io::Error) -> Error {
    Error::Read {
        path: path.to_path_buf(),
        source,
    }
}

/// Read an attribute that may be missing, trimmed.
pub fn read_optional(path: &Path) -> Result<Option<String>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).trim().to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(read_error(path, e)),
    }
}

/// Read an attribute the ABI promises, trimmed.
pub fn read_required(path: &Path) -> Result<String> {
    read_optional(path)?.ok_or_else(|| Error::MissingAttribute {
        path: path.to_path_buf(),
    })
}

/// Parse a decimal `u32` attribute's trimmed content.
pub fn parse_u32(path: &Path, content: &str) -> Result<u32> {
    content.trim().parse().map_err(|_| Error::Parse {
        path: path.to_path_buf(),
        content: content.to_string(),
        expected: "a decimal number",
    })
}

/// Read a required decimal `u32` attribute.
pub fn read_required_u32(path: &Path) -> Result<u32> {
    let content = read_required(path)?;
    parse_u32(path, &content)
}

/// The names in a directory, sorted; `None` if the directory does not exist.
pub fn dir_names(dir: &Path) -> Result<Option<Vec<String>>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_error(dir, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| read_error(dir, e))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(Some(names))
}

/// Whether anything (file, directory or link, even dangling) exists at `path`.
pub fn exists(path: &Path) -> Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(read_error(path, e)),
    }
}

/// The number a link such as `iommu_group -> ../../kernel/iommu_groups/12` ends in;
/// `None` if the link is missing.
pub fn read_link_number(link: &Path) -> Result<Option<u32>> {
    let target = match fs::read_link(link) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_error(link, e)),
    };
    last_component_number(link, &target).map(Some)
}

/// Pure part of [`read_link_number`]: parse the last component of a link target.
pub fn last_component_number(link: &Path, target: &Path) -> Result<u32> {
    let last = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    last.parse().map_err(|_| Error::Parse {
        path: link.to_path_buf(),
        content: target.to_string_lossy().into_owned(),
        expected: "a link whose last component is a group number",
    })
}

/// Reject names that are not one sysfs directory entry (so no path escapes the tree).
pub fn check_name(what: &'static str, name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(Error::InvalidName {
            what,
            name: name.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_u32_accepts_decimal_and_rejects_garbage() {
        let p = Path::new("/t/available_instances");
        assert_eq!(parse_u32(p, "12\n").ok(), Some(12));
        let e = parse_u32(p, "twelve").err();
        assert!(
            matches!(e, Some(Error::Parse { ref path, ref content, .. }) if path == p && content == "twelve"),
            "{e:?}"
        );
        assert!(parse_u32(p, "-1").is_err());
    }

    #[test]
    fn last_component_number_parses_group_links() {
        let link = Path::new("/d/iommu_group");
        assert_eq!(
            last_component_number(link, Path::new("../../../kernel/iommu_groups/42")).ok(),
            Some(42)
        );
        let e = last_component_number(link, Path::new("../groups/x"));
        assert!(matches!(e, Err(Error::Parse { .. })), "{e:?}");
    }

    #[test]
    fn check_name_rejects_path_escapes() {
        for bad in ["", ".", "..", "a/b", "../x"] {
            assert!(check_name("type", bad).is_err(), "{bad:?}");
        }
        assert!(check_name("parent", "0000:3b:00.0").is_ok());
    }

    #[test]
    fn optional_and_required_reads() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| read_error(Path::new("tmp"), e))?;
        let f = dir.path().join("name");
        assert_eq!(read_optional(&f)?, None);
        assert!(
            matches!(read_required(&f), Err(Error::MissingAttribute { ref path }) if *path == f)
        );
        fs::write(&f, "GRID T4-2Q\n").map_err(|e| read_error(&f, e))?;
        assert_eq!(read_required(&f)?, "GRID T4-2Q");
        assert_eq!(dir_names(&dir.path().join("none"))?, None);
        assert_eq!(dir_names(dir.path())?, Some(vec!["name".to_string()]));
        Ok(())
    }
}
