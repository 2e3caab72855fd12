//! The guest's initramfs: busybox as `/init`, kernel modules, binaries, the test script.
//!
//! The image is a `newc` cpio archive built from a staging directory. Its `/init`
//! is a busybox shell script ([`GuestImage::init_text`]) that mounts `/proc`,
//! `/sys` and `/dev`, silences kernel messages on the console, loads the modules
//! in the order they were added, runs the test's script from `/test.sh`, prints
//! `GVMEXIT <status>` and powers the machine off (`poweroff -f`; with QEMU's
//! `-no-reboot` and `panic=-1` the guest always ends).
//!
//! The first thing `/init` prints is an empty line: the firmware leaves terminal
//! escapes without a newline on the console, which would otherwise glue themselves
//! to the front of the first marker line.
//!
//! Guest layout: modules in `/modules/<name>.ko` (the script can `rmmod`/`insmod`
//! them again), binaries in `/bin/<name>`, extra files (contents or host files) where the
//! caller says.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use super::error::{tail, HarnessError};
use super::prepare::PreparedKernel;

/// The marker line `/init` prints with the test script's exit status.
pub const EXIT_MARKER: &str = "GVMEXIT ";

/// One file placed in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFile {
    /// Absolute path inside the guest.
    pub guest_path: String,
    /// Where its contents come from.
    pub source: FileSource,
    /// Permission bits (e.g. `0o755`).
    pub mode: u32,
}

/// The contents of a [`GuestFile`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileSource {
    /// Copy this host file.
    Host(PathBuf),
    /// These bytes.
    Bytes(Vec<u8>),
}

/// Builder of a test initramfs.
#[derive(Debug, Clone)]
pub struct GuestImage {
    kernel: PreparedKernel,
    busybox: PathBuf,
    modules: Vec<String>,
    files: Vec<GuestFile>,
    script: String,
}

impl GuestImage {
    /// An image for this kernel with busybox from `/bin/busybox` (Debian's busybox-static).
    pub fn new(kernel: &PreparedKernel) -> Self {
        GuestImage {
            kernel: kernel.clone(),
            busybox: PathBuf::from("/bin/busybox"),
            modules: Vec::new(),
            files: Vec::new(),
            script: String::new(),
        }
    }

    /// Use another statically linked busybox.
    pub fn busybox(mut self, path: impl Into<PathBuf>) -> Self {
        self.busybox = path.into();
        self
    }

    /// Load this prepared module at boot, after those added before it.
    pub fn module(mut self, name: &str) -> Self {
        self.modules.push(name.to_string());
        self
    }

    /// Copy a (statically linked) host binary to `/bin/<guest_name>`.
    pub fn binary(mut self, host_path: impl Into<PathBuf>, guest_name: &str) -> Self {
        self.files.push(GuestFile {
            guest_path: format!("/bin/{guest_name}"),
            source: FileSource::Host(host_path.into()),
            mode: 0o755,
        });
        self
    }

    /// Copy a host file to `guest_path` with permission bits `mode` (a shared library,
    /// the dynamic loader: they go where the host has them).
    pub fn host_file(mut self, host_path: impl Into<PathBuf>, guest_path: &str, mode: u32) -> Self {
        self.files.push(GuestFile {
            guest_path: guest_path.to_string(),
            source: FileSource::Host(host_path.into()),
            mode,
        });
        self
    }

    /// Place a file with these contents at `guest_path` (mode 0644).
    pub fn file(mut self, guest_path: &str, contents: impl Into<Vec<u8>>) -> Self {
        self.files.push(GuestFile {
            guest_path: guest_path.to_string(),
            source: FileSource::Bytes(contents.into()),
            mode: 0o644,
        });
        self
    }

    /// The test's shell script, run by busybox `sh` after the modules are loaded.
    pub fn init_script(mut self, text: &str) -> Self {
        self.script = text.to_string();
        self
    }

    /// The `/init` script this image boots with.
    pub fn init_text(&self) -> String {
        let mut s = String::from(
            "#!/bin/busybox sh\n\
             echo\n\
             /bin/busybox --install -s /bin\n\
             export PATH=/bin\n\
             mkdir -p /proc /sys /dev /tmp\n\
             mount -t proc proc /proc\n\
             mount -t sysfs sysfs /sys\n\
             mount -t devtmpfs devtmpfs /dev\n\
             echo 1 > /proc/sys/kernel/printk\n",
        );
        for m in &self.modules {
            s.push_str(&format!(
                "insmod /modules/{m}.ko || echo \"GVMERROR insmod {m} failed\"\n"
            ));
        }
        s.push_str("sh /test.sh\n");
        s.push_str(&format!("echo \"{EXIT_MARKER}$?\"\n"));
        s.push_str("poweroff -f\n");
        s
    }

    /// Write the archive into `work_dir` (staging under `work_dir/root`) and return its path.
    pub fn build(&self, work_dir: &Path) -> Result<PathBuf, HarnessError> {
        let root = work_dir.join("root");
        if root.exists() {
            std::fs::remove_dir_all(&root)
                .map_err(|e| HarnessError::io(format!("clearing {}", root.display()), e))?;
        }
        let mut entries = vec![
            GuestFile {
                guest_path: "/bin/busybox".into(),
                source: FileSource::Host(self.busybox.clone()),
                mode: 0o755,
            },
            GuestFile {
                guest_path: "/init".into(),
                source: FileSource::Bytes(self.init_text().into_bytes()),
                mode: 0o755,
            },
            GuestFile {
                guest_path: "/test.sh".into(),
                source: FileSource::Bytes(self.script.clone().into_bytes()),
                mode: 0o755,
            },
        ];
        for m in &self.modules {
            let path = self.kernel.module_path(m);
            if !path.is_file() {
                return Err(HarnessError::MissingModule {
                    name: m.clone(),
                    dir: self.kernel.dir().join("modules"),
                });
            }
            entries.push(GuestFile {
                guest_path: format!("/modules/{m}.ko"),
                source: FileSource::Host(path),
                mode: 0o644,
            });
        }
        entries.extend(self.files.iter().cloned());
        for f in &entries {
            stage(&root, f)?;
        }
        let list = archive_list(entries.iter().map(|f| f.guest_path.as_str()))?;
        let out = work_dir.join("initramfs.cpio");
        pack(&root, &list, &out, &self.busybox)?;
        Ok(out)
    }
}

/// `guest_path` relative to the staging root, refusing anything but a plain absolute path.
fn relative(guest_path: &str) -> Result<PathBuf, HarnessError> {
    let p = Path::new(guest_path);
    let bad = || HarnessError::BadGuestPath {
        path: guest_path.to_string(),
    };
    if !p.is_absolute() {
        return Err(bad());
    }
    let mut rel = PathBuf::new();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => rel.push(n),
            Component::ParentDir | Component::Prefix(_) => return Err(bad()),
        }
    }
    if rel.as_os_str().is_empty() {
        return Err(bad());
    }
    Ok(rel)
}

/// The archive's member list: every file and each directory above it, parents first.
pub(crate) fn archive_list<'a>(
    guest_paths: impl Iterator<Item = &'a str>,
) -> Result<Vec<PathBuf>, HarnessError> {
    let mut set = BTreeSet::new();
    for g in guest_paths {
        let rel = relative(g)?;
        let mut dir = rel.parent();
        while let Some(d) = dir {
            if !d.as_os_str().is_empty() {
                set.insert(d.to_path_buf());
            }
            dir = d.parent();
        }
        set.insert(rel);
    }
    // BTreeSet order puts "a" before "a/b": parents precede their contents.
    Ok(set.into_iter().collect())
}

fn stage(root: &Path, f: &GuestFile) -> Result<(), HarnessError> {
    let dest = root.join(relative(&f.guest_path)?);
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| HarnessError::io(format!("creating {}", parent.display()), e))?;
    }
    match &f.source {
        FileSource::Host(src) => std::fs::copy(src, &dest).map(|_| ()).map_err(|e| {
            HarnessError::io(
                format!("copying {} to {}", src.display(), dest.display()),
                e,
            )
        })?,
        FileSource::Bytes(b) => std::fs::write(&dest, b)
            .map_err(|e| HarnessError::io(format!("writing {}", dest.display()), e))?,
    }
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(f.mode))
        .map_err(|e| HarnessError::io(format!("chmod {}", dest.display()), e))
}

/// `cpio -o -H newc` in the staging root (the host's cpio, else busybox's).
fn pack(root: &Path, list: &[PathBuf], out: &Path, busybox: &Path) -> Result<(), HarnessError> {
    let out_file = std::fs::File::create(out)
        .map_err(|e| HarnessError::io(format!("creating {}", out.display()), e))?;
    let (program, mut cmd) =
        if Path::new("/usr/bin/cpio").is_file() || Path::new("/bin/cpio").is_file() {
            ("cpio".to_string(), Command::new("cpio"))
        } else {
            let mut c = Command::new(busybox);
            c.arg("cpio");
            (format!("{} cpio", busybox.display()), c)
        };
    let mut child = cmd
        .args(["-o", "-H", "newc"])
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(out_file)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| HarnessError::Spawn {
            program: program.clone(),
            package: "cpio",
            source,
        })?;
    let mut names = String::new();
    for p in list {
        names.push_str(&p.to_string_lossy());
        names.push('\n');
    }
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(names.as_bytes())
            .map_err(|e| HarnessError::io(format!("feeding the file list to {program}"), e))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| HarnessError::io(format!("waiting for {program}"), e))?;
    if !output.status.success() {
        return Err(HarnessError::CommandFailed {
            program,
            status: output.status.to_string(),
            output_tail: tail(&output.stderr, 10),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A prepared-kernel directory with only its `abi` file (kept alive by the TempDir).
    fn kernel() -> (tempfile::TempDir, PreparedKernel) {
        let tmp = match tempfile::tempdir() {
            Ok(t) => t,
            Err(e) => panic!("fixture: {e}"),
        };
        if let Err(e) = std::fs::write(tmp.path().join("abi"), "6.1.0-0-amd64\n") {
            panic!("fixture: {e}");
        }
        match PreparedKernel::from_dir(tmp.path()) {
            Ok(k) => (tmp, k),
            Err(e) => panic!("fixture: {e}"),
        }
    }

    #[test]
    fn init_loads_modules_in_order_then_runs_the_script_and_powers_off() {
        let (_dir, k) = kernel();
        let img = GuestImage::new(&k)
            .module("vfio")
            .module("mdev")
            .module("mtty")
            .init_script("echo hi");
        let init = img.init_text();
        let pos = |s: &str| init.find(s).unwrap_or(usize::MAX);
        assert!(pos("insmod /modules/vfio.ko") < pos("insmod /modules/mdev.ko"));
        assert!(pos("insmod /modules/mdev.ko") < pos("insmod /modules/mtty.ko"));
        assert!(pos("mount -t sysfs") < pos("insmod /modules/vfio.ko"));
        assert!(pos("insmod /modules/mtty.ko") < pos("sh /test.sh"));
        assert!(pos("sh /test.sh") < pos(EXIT_MARKER));
        assert!(init.trim_end().ends_with("poweroff -f"));
        assert_eq!(init.lines().nth(1), Some("echo"), "a newline first: {init}");
    }

    #[test]
    fn archive_list_has_parents_before_children_once() -> Result<(), HarnessError> {
        let list = archive_list(["/bin/busybox", "/modules/a.ko", "/bin/x", "/init"].into_iter())?;
        let names: Vec<String> = list.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/busybox",
                "bin/x",
                "init",
                "modules",
                "modules/a.ko"
            ]
        );
        Ok(())
    }

    #[test]
    fn guest_paths_must_be_absolute_and_plain() {
        assert!(relative("etc/x").is_err());
        assert!(relative("/etc/../x").is_err());
        assert!(relative("/").is_err());
        assert_eq!(relative("/etc/./x").ok(), Some(PathBuf::from("etc/x")));
    }

    #[test]
    fn a_missing_module_is_named() {
        let (dir, k) = kernel();
        let err = GuestImage::new(&k)
            .module("no_such_module")
            .build(&dir.path().join("work"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("no_such_module"), "{err}");
    }
}
