//! Man pages rendered from clap definitions, with the sections clap does not know.
//!
//! [`pages`] renders one page per command and, recursively, one per subcommand
//! (`gvm-vgpu-policy-show(1)` for `gvm-vgpu policy show`), so that every page the generated
//! SUBCOMMANDS sections cite exists. Each page gets `clap_mangen`'s sections followed by
//! FILES, ENVIRONMENT, EXIT STATUS, EXAMPLES and SEE ALSO from a [`Extras`]. [`references`]
//! lists the `name(N)` pages a rendered page cites, for checking that none is missing.
//!
//! The pages of `gvm-vgpu` itself are [`cli_pages`]; `gvm-vgpu-docs` adds the daemon's, the
//! hook's, the guest agent's and the simulated host's.

use std::io;

use clap::{Command, CommandFactory};

/// The sections a page has beyond what clap renders.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// FILES: (path, what it is).
    pub files: Vec<(String, String)>,
    /// ENVIRONMENT: (variable, what it does).
    pub environment: Vec<(String, String)>,
    /// EXIT STATUS: (status, when).
    pub exit_status: Vec<(String, String)>,
    /// EXAMPLES: (command line, what it does).
    pub examples: Vec<(String, String)>,
    /// SEE ALSO: pages, as `name(N)`; each must be generated too.
    pub see_also: Vec<String>,
}

/// One rendered page.
#[derive(Debug, Clone)]
pub struct Page {
    /// The page's name (`gvm-vgpu-policy-show`).
    pub name: String,
    /// Its section (`1`, `8`).
    pub section: String,
    /// The roff text.
    pub roff: String,
}

impl Page {
    /// The page's file name (`gvm-vgpu.1`).
    pub fn file_name(&self) -> String {
        format!("{}.{}", self.name, self.section)
    }
}

/// Escape `text` for a roff text line: backslashes and hyphens, and a leading `.` or `'`
/// that roff would read as a request.
pub fn roff_escape(text: &str) -> String {
    let escaped = text.replace('\\', "\\\\").replace('-', "\\-");
    if escaped.starts_with('.') || escaped.starts_with('\'') {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

fn tagged_section(out: &mut String, title: &str, items: &[(String, String)], bold: bool) {
    if items.is_empty() {
        return;
    }
    out.push_str(&format!(".SH \"{title}\"\n"));
    for (term, text) in items {
        let term = roff_escape(term);
        out.push_str(".TP\n");
        if bold {
            out.push_str(&format!("\\fB{term}\\fR\n"));
        } else {
            out.push_str(&format!("{term}\n"));
        }
        for line in text.lines() {
            out.push_str(&roff_escape(line));
            out.push('\n');
        }
    }
}

/// The roff of `extras`' sections, in the order man-pages(7) gives them.
pub fn render_extras(extras: &Extras) -> String {
    let mut out = String::new();
    tagged_section(&mut out, "EXIT STATUS", &extras.exit_status, true);
    tagged_section(&mut out, "ENVIRONMENT", &extras.environment, true);
    tagged_section(&mut out, "FILES", &extras.files, true);
    if !extras.examples.is_empty() {
        out.push_str(".SH EXAMPLES\n");
        for (cmd, what) in &extras.examples {
            out.push_str(".PP\n");
            for line in what.lines() {
                out.push_str(&roff_escape(line));
                out.push('\n');
            }
            out.push_str(".PP\n.RS 4\n.nf\n");
            out.push_str(&format!("\\fB{}\\fR\n", roff_escape(cmd)));
            out.push_str(".fi\n.RE\n");
        }
    }
    if !extras.see_also.is_empty() {
        out.push_str(".SH \"SEE ALSO\"\n");
        let refs: Vec<String> = extras
            .see_also
            .iter()
            .map(|r| match r.split_once('(') {
                Some((name, rest)) => format!("\\fB{}\\fR({rest}", roff_escape(name)),
                None => roff_escape(r),
            })
            .collect();
        out.push_str(&refs.join(",\n"));
        out.push('\n');
    }
    out
}

fn render(cmd: Command, section: &str, extras: &Extras) -> io::Result<String> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd)
        .section(section)
        .manual("gvm-vgpu")
        .render(&mut buf)?;
    let mut text = String::from_utf8(buf).map_err(|e| io::Error::other(e.to_string()))?;
    text.push_str(&render_extras(extras));
    Ok(text)
}

/// Render `cmd` as page `name`(`section`) and every visible subcommand, recursively, as
/// `name-sub`(`section`); `extras(page name, subcommand path)` gives each page's extra
/// sections (the path is empty for the top page, `["policy", "show"]` below it).
pub fn pages(
    cmd: Command,
    name: &str,
    section: &str,
    extras: &dyn Fn(&str, &[String]) -> Extras,
) -> io::Result<Vec<Page>> {
    let mut out = Vec::new();
    walk(cmd, name, section, &mut Vec::new(), extras, &mut out)?;
    Ok(out)
}

fn walk(
    cmd: Command,
    name: &str,
    section: &str,
    path: &mut Vec<String>,
    extras: &dyn Fn(&str, &[String]) -> Extras,
    out: &mut Vec<Page>,
) -> io::Result<()> {
    // clap's generated `help` subcommand would be cited as a page of its own.
    let cmd = cmd.name(name.to_string()).disable_help_subcommand(true);
    let subs: Vec<Command> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .cloned()
        .collect();
    out.push(Page {
        name: name.to_string(),
        section: section.to_string(),
        roff: render(cmd, section, &extras(name, path))?,
    });
    for sub in subs {
        path.push(sub.get_name().to_string());
        let sub_name = format!("{name}-{}", sub.get_name());
        walk(sub, &sub_name, section, path, extras, out)?;
        path.pop();
    }
    Ok(())
}

/// The pages `roff` cites, as `name(N)` with roff's `\-` and font changes undone.
pub fn references(roff: &str) -> Vec<String> {
    let plain = roff
        .replace("\\-", "-")
        .replace("\\fB", "")
        .replace("\\fI", "")
        .replace("\\fR", "")
        .replace("\\fP", "");
    let bytes = plain.as_bytes();
    let mut refs = Vec::new();
    for (i, _) in plain.match_indices('(') {
        // `name(N)`: a digit and `)` after, a page name before.
        let (Some(d), Some(b')')) = (bytes.get(i + 1), bytes.get(i + 2)) else {
            continue;
        };
        if !d.is_ascii_digit() {
            continue;
        }
        let start = plain[..i]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c)))
            .map_or(0, |p| p + 1);
        let name = plain[start..i].trim_start_matches(['.', '-']);
        if name.is_empty() || !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
            continue;
        }
        refs.push(format!("{name}({})", *d as char));
    }
    refs
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// FILES of every gvm-vgpu page.
fn cli_files() -> Vec<(String, String)> {
    pairs(&[
        (
            "/run/gvm-vgpu/api.sock",
            "gvm-vgpud's API socket; commands that change state go through it.",
        ),
        (
            "/usr/share/gvm-vgpu/mdev-types/*.toml",
            "The vGPU type catalog shipped with the package.",
        ),
        (
            "/etc/gvm-vgpu/mdev-types/*.toml",
            "Operator catalog files; a file here replaces the shipped model of the same name.",
        ),
        (
            "/etc/gvm-vgpu/vgpus/*.json",
            "Persistent vGPU definitions (define, start, autostart).",
        ),
        (
            "/sys/class/mdev_bus, /sys/bus/mdev/devices",
            "The kernel's mdev parents, types and devices (under --root).",
        ),
    ])
}

fn cli_environment() -> Vec<(String, String)> {
    pairs(&[
        (
            gvm_host_root::ROOT_ENV,
            "Host root every path is read under, as --root (the simulated host's directory).",
        ),
        (
            gvm_catalog::CATALOG_ENV,
            "Extra catalog directories, colon-separated, searched first.",
        ),
        (
            "GVM_LIBVIRT_LIBRARY",
            "The file attach, detach and show DOMAIN load for libvirt's client library instead \
             of libvirt.so.0 (package libvirt0, loaded at run time, not linked: without it \
             only those commands fail).",
        ),
    ])
}

/// EXIT STATUS of every gvm-vgpu page.
fn cli_exit_status() -> Vec<(String, String)> {
    pairs(&[
        ("0", "Success."),
        (
            "1",
            "The operation failed (the message names what and the fix).",
        ),
        ("2", "Usage error: unknown option, missing or bad argument."),
        (
            "--json",
            "Under --json a failure (usage errors too) also prints one object on stdout: \
             {\"schema\": 1, \"error\": {\"message\", \"causes\", \"hint\", \"code\"}}, \
             with the same exit status (docs/cli-json.md).",
        ),
    ])
}

/// Examples for `gvm-vgpu <path...>`; the top page gets a tour.
fn cli_examples(path: &[String]) -> Vec<(String, String)> {
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    let ex: &[(&str, &str)] = match p.as_slice() {
        [] => &[
            ("gvm-vgpu types", "List the host's vGPU types with the catalog's limits."),
            ("gvm-vgpu create --type sim-4c", "Create a vGPU of type sim-4c on the first GPU that can hold one."),
            ("gvm-vgpu --root /tmp/simhost list", "List the vGPUs of a simulated host started with gvm-vgpu-sim --root /tmp/simhost."),
        ],
        ["parents"] => &[("gvm-vgpu parents --json", "The GPUs that can host vGPUs, as JSON.")],
        ["types"] => &[("gvm-vgpu types", "Every kernel type with its catalog limits and how many more fit.")],
        ["create"] => &[("gvm-vgpu create --type sim-4c", "Create a vGPU of type sim-4c; its UUID is printed.")],
        ["remove"] => &[("gvm-vgpu remove 9d4c1a52-0d5f-4a8e-9f4e-6b0c2a4b1e11", "Remove a vGPU no running VM uses.")],
        ["list"] => &[("gvm-vgpu list", "Live vGPUs with their type, limits and owners."), ("gvm-vgpu list --defined", "Persistent definitions.")],
        ["show"] => &[
            ("gvm-vgpu show 9d4c1a52-0d5f-4a8e-9f4e-6b0c2a4b1e11", "One vGPU: device, type, effective knobs, owners' gcgroups."),
            ("gvm-vgpu show vm1", "The vGPUs of libvirt domain vm1, running or only defined."),
        ],
        ["define"] => &[("gvm-vgpu define --type sim-4c --autostart", "A definition gvm-vgpud creates at boot, when its GPU appears.")],
        ["undefine"] => &[("gvm-vgpu undefine 9d4c1a52-0d5f-4a8e-9f4e-6b0c2a4b1e11", "Delete a definition; a running vGPU keeps running.")],
        ["start"] => &[("gvm-vgpu start 9d4c1a52-0d5f-4a8e-9f4e-6b0c2a4b1e11", "Create a defined vGPU now.")],
        ["stop"] => &[("gvm-vgpu stop 9d4c1a52-0d5f-4a8e-9f4e-6b0c2a4b1e11", "Remove a defined vGPU's device, keeping the definition.")],
        ["set"] => &[("gvm-vgpu set --live --memory-limit 6GiB --priority 2 9d4c1a52-0d5f-4a8e-9f4e-6b0c2a4b1e11", "Retune a running vGPU; its owners follow within a second.")],
        ["freeze"] => &[("gvm-vgpu freeze 9d4c1a52-0d5f-4a8e-9f4e-6b0c2a4b1e11", "Stop the vGPU's GPU work.")],
        ["thaw"] => &[("gvm-vgpu thaw 9d4c1a52-0d5f-4a8e-9f4e-6b0c2a4b1e11", "Resume it.")],
        ["import-mdevctl"] => &[
            ("gvm-vgpu import-mdevctl", "Adopt the definitions in /etc/mdevctl.d."),
            ("gvm-vgpu import-mdevctl --remove-source", "Adopt them and delete mdevctl's copies once ours are stored."),
        ],
        ["reconcile"] => &[("gvm-vgpu reconcile", "Reconcile now and report drift.")],
        ["status"] => &[("gvm-vgpu status", "gvm-vgpud's version, host root and the catalog it uses.")],
        ["stats"] => &[("gvm-vgpu stats", "What each VM's guest agent reports.")],
        ["xml"] => &[("gvm-vgpu xml 9d4c1a52-0d5f-4a8e-9f4e-6b0c2a4b1e11", "The <hostdev> element for a libvirt domain.")],
        ["qemu-args"] => &[("gvm-vgpu qemu-args 9d4c1a52-0d5f-4a8e-9f4e-6b0c2a4b1e11", "The -device argument for plain QEMU.")],
        ["attach"] => &[("gvm-vgpu attach --type sim-4c vm1", "Create a vGPU and give it to domain vm1.")],
        ["detach"] => &[
            ("gvm-vgpu detach --uuid 9d4c1a52-0d5f-4a8e-9f4e-6b0c2a4b1e11 vm1", "Take it back (and remove it when attach created it)."),
            ("gvm-vgpu detach --keep-vgpu --uuid 9d4c1a52-0d5f-4a8e-9f4e-6b0c2a4b1e11 vm1", "Take it back, keeping the vGPU attach created."),
        ],
        ["policy"] => &[("gvm-vgpu policy show", "Each GPU's scheduling policy and shares.")],
        ["policy", "show"] => &[("gvm-vgpu policy show --json", "The policies as JSON.")],
        ["policy", "set"] => &[("gvm-vgpu policy set equal-share", "Give every vGPU an equal share of every GPU, live.")],
        ["top"] => &[("gvm-vgpu top --once", "Achieved and target GPU shares, once.")],
        ["completions"] => &[("gvm-vgpu completions bash > /usr/share/bash-completion/completions/gvm-vgpu", "Install bash completion.")],
        ["man"] => &[("gvm-vgpu man /tmp/man && man -l /tmp/man/gvm-vgpu.1", "Write and read these pages.")],
        _ => &[],
    };
    let mut out = pairs(ex);
    if out.is_empty() {
        let line = std::iter::once("gvm-vgpu")
            .chain(p.iter().copied())
            .collect::<Vec<_>>()
            .join(" ");
        out.push((
            format!("{line} --help"),
            "Every option of this command.".into(),
        ));
    }
    out
}

/// The extra sections of `gvm-vgpu` and its subcommands' pages.
pub fn cli_extras(page: &str, path: &[String]) -> Extras {
    let mut see_also = vec!["gvm-vgpud(8)".to_string()];
    if path.is_empty() {
        see_also.push("gvm-vgpu-hook(8)".into());
        see_also.push("gvm-vgpu-sim(1)".into());
    } else {
        see_also.insert(0, "gvm-vgpu(1)".into());
    }
    let _ = page;
    Extras {
        files: cli_files(),
        environment: cli_environment(),
        exit_status: cli_exit_status(),
        examples: cli_examples(path),
        see_also,
    }
}

/// The pages of `gvm-vgpu` and every subcommand.
pub fn cli_pages() -> io::Result<Vec<Page>> {
    pages(crate::cli::Cli::command(), "gvm-vgpu", "1", &cli_extras)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn references_are_found_through_roff_escapes() {
        let roff = ".SH \"SEE ALSO\"\n\\fBgvm\\-vgpud\\fR(8),\nsee gvm\\-vgpu\\-policy\\-show(1) and f(x) (2)";
        assert_eq!(
            references(roff),
            vec!["gvm-vgpud(8)", "gvm-vgpu-policy-show(1)"]
        );
    }

    #[test]
    fn nested_subcommands_get_pages_and_no_help_page_is_cited() {
        let pages = cli_pages().unwrap();
        let names: Vec<&str> = pages.iter().map(|p| p.name.as_str()).collect();
        assert!(names.contains(&"gvm-vgpu-policy-show"), "{names:?}");
        assert!(!names.iter().any(|n| n.ends_with("-help")), "{names:?}");
        let top = &pages[0].roff;
        assert!(!references(top).iter().any(|r| r.ends_with("-help(1)")));
        for p in &pages {
            for s in ["EXIT STATUS", "ENVIRONMENT", "FILES", "EXAMPLES"] {
                assert!(
                    p.roff.contains(&format!(".SH \"{s}\""))
                        || p.roff.contains(&format!(".SH {s}")),
                    "{} lacks {s}",
                    p.name
                );
            }
        }
    }

    #[test]
    fn a_leading_dot_is_not_a_roff_request() {
        assert_eq!(roff_escape(".hidden -x"), "\\&.hidden \\-x");
    }
}
