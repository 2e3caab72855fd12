//! The generated man pages and completions: a page for every binary and every subcommand,
//! each with FILES, ENVIRONMENT, EXIT STATUS and EXAMPLES, none citing a page that is not
//! generated, each one that `man` (groff) reads without a warning where groff is installed;
//! completions for every binary in bash, zsh and fish.

#![allow(missing_docs, clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use clap::CommandFactory;

fn subcommand_paths(cmd: &clap::Command, prefix: &str, out: &mut Vec<String>) {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("{prefix}-{}", sub.get_name());
        out.push(name.clone());
        subcommand_paths(sub, &name, out);
    }
}

#[test]
fn every_binary_and_subcommand_has_a_page_with_the_operator_sections() {
    let pages = gvm_vgpu_docs::all_pages().unwrap();
    let files: Vec<String> = pages.iter().map(|p| p.file_name()).collect();
    for f in [
        "gvm-vgpu.1",
        "gvm-vgpud.8",
        "gvm-vgpu-hook.8",
        "gvm-vgpu-agent.8",
        "gvm-vgpu-sim.1",
        "gvm-vgpu-policy-show.1",
    ] {
        assert!(files.contains(&f.to_string()), "no {f} in {files:?}");
    }
    let mut subs = Vec::new();
    subcommand_paths(&gvm_vgpu_cli::cli::Cli::command(), "gvm-vgpu", &mut subs);
    for s in subs {
        assert!(files.contains(&format!("{s}.1")), "no page for {s}");
    }
    for p in &pages {
        for s in [
            "FILES",
            "ENVIRONMENT",
            "EXIT STATUS",
            "EXAMPLES",
            "SEE ALSO",
        ] {
            assert!(
                p.roff.contains(&format!(".SH \"{s}\"")) || p.roff.contains(&format!(".SH {s}\n")),
                "{} has no {s} section",
                p.file_name()
            );
        }
    }
}

#[test]
fn no_page_cites_a_page_that_is_not_generated() {
    let mut pages = gvm_vgpu_docs::all_pages().unwrap();
    let missing = gvm_vgpu_docs::missing_references(&pages);
    assert!(missing.is_empty(), "{missing:?}");
    // The check can fail: a page citing one that does not exist is reported.
    pages[0]
        .roff
        .push_str(".SH \"SEE ALSO\"\n\\fBgvm\\-vgpu\\-nothing\\fR(1)\n");
    assert_eq!(
        gvm_vgpu_docs::missing_references(&pages),
        vec![("gvm-vgpu.1".to_string(), "gvm-vgpu-nothing(1)".to_string())]
    );
    // The daemon's unit names its page: it is generated.
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/gvm-vgpud.service"),
    )
    .unwrap();
    assert!(unit.contains("Documentation=man:gvm-vgpud(8)"));
    assert!(pages.iter().any(|p| p.file_name() == "gvm-vgpud.8"));
}

#[test]
fn generate_writes_pages_and_completions_that_man_reads_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let files = gvm_vgpu_docs::generate(dir.path()).unwrap();
    let man = dir.path().join("man");
    assert!(man.join("gvm-vgpud.8").is_file());
    for bin in ["gvm-vgpu", "gvm-vgpud", "gvm-vgpu-agent", "gvm-vgpu-sim"] {
        for f in [
            format!("bash/{bin}"),
            format!("zsh/_{bin}"),
            format!("fish/{bin}.fish"),
        ] {
            let text = std::fs::read_to_string(dir.path().join("completions").join(&f)).unwrap();
            assert!(text.contains(bin), "{f}");
        }
    }
    // gvm-vgpu's completion is dynamic: the script calls the binary back (COMPLETE=bash),
    // which knows the subcommands and the host's values (crates/cli/tests/completions.rs).
    let bash = std::fs::read_to_string(dir.path().join("completions/bash/gvm-vgpu")).unwrap();
    assert!(
        bash.contains("COMPLETE=\"bash\"") || bash.contains("COMPLETE=bash"),
        "the bash completion does not call gvm-vgpu back: {bash}"
    );
    let daemon = std::fs::read_to_string(dir.path().join("completions/bash/gvm-vgpud")).unwrap();
    assert!(
        daemon.contains("--guest-ack-ms"),
        "gvm-vgpud's static completion lacks its flags"
    );
    assert!(files.len() > 30, "{}", files.len());

    if Command::new("groff").arg("--version").output().is_err() {
        println!("SKIP: groff is not installed; pages not rendered");
        return;
    }
    for f in files.iter().filter(|f| f.starts_with(&man)) {
        let out = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(f)
            .output()
            .unwrap();
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && warnings.trim().is_empty(),
            "{}: {warnings}",
            f.display()
        );
    }
}
