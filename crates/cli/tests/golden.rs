//! `gvm-vgpu` output as data: what the main commands print, in text and `--json`, against
//! expected files under `crates/cli/testdata/golden/`, so a change to a table or an object
//! shows up as a reviewed diff of those files (as mdevctl does with its tests/ output).
//!
//! One simulated host (two `gvm-sim` GPUs) and one `gvm-vgpud`, vGPUs with fixed UUIDs, then
//! each command once as text and once under `--json`. A file is what the command wrote to
//! stdout; a command that fails also records its exit status and stderr. Output that
//! cannot be the same from run to run is rewritten by [`normalise`] and nothing else is.
//!
//! Regenerate after an intended change, then review the diff:
//!
//! ```text
//! GVM_UPDATE_GOLDEN=1 cargo test -p gvm-vgpu-cli --test golden
//! git diff crates/cli/testdata/golden/
//! ```
//!
//! Needs root and /dev/fuse (the simulated host is a FUSE mount); prints `SKIP: <reason>`
//! without them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Output;

use gvm_testkit::{require_root_and_fuse, skip, SimHost, SimModel};
use support::{gvm_vgpu, succeeded, wait_up_to, Daemon};

mod support;

/// Set to `1` to write what the commands print into the expected files instead of comparing.
const UPDATE_VAR: &str = "GVM_UPDATE_GOLDEN";

/// The running vGPU `create` makes on the first GPU.
const RUNNING: &str = "a1b2c3d4-0000-4000-8000-000000000001";
/// The stopped definition `define` stores for the second GPU.
const DEFINED: &str = "a1b2c3d4-0000-4000-8000-000000000002";
/// A well-formed UUID no vGPU has: the failing command's object.
const ABSENT: &str = "a1b2c3d4-0000-4000-8000-0000000000ff";

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/golden")
}

fn cli(root: &Path, args: &[&str]) -> Output {
    gvm_vgpu(root, args).output().expect("run gvm-vgpu")
}

fn ok(root: &Path, args: &[&str]) -> String {
    succeeded(&cli(root, args), args)
}

/// What one run of a command is recorded as: its stdout, then, when it failed or wrote to
/// stderr, its exit status and stderr under a marker line.
fn recorded(o: &Output) -> String {
    let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr);
    if !o.status.success() || !err.is_empty() {
        let code = o
            .status
            .code()
            .map_or_else(|| "signal".to_string(), |c| c.to_string());
        text.push_str(&format!("--- exit {code}, stderr ---\n{err}"));
    }
    text
}

/// Rewrite what differs from run to run, and only that:
///
/// - the temporary host root (`/tmp/gvm-sim-test.<pid>.<n>.<nanos>`) becomes `<ROOT>`,
///   wherever it appears (sysfs paths, `--root` echoes, qemu's `sysfsdev=`);
/// - the process ids of the owner process and of the daemon become `<PID>` where they
///   stand as a whole number (a value that happens to equal one would read `<PID>` too;
///   pids are small next to the sizes printed, and the test would then fail, not pass).
///
/// - in a table whose first column is the pid, the spaces after that column become two
///   (its width follows the pid's digit count).
///
/// - `policy show --json`'s scheduler clock: the values of `"ticks"` and `"seconds"`
///   become `<TICKS>` and `<SECONDS>` (they count time since the daemon started).
///
/// - `status`'s clock: when the catalog was loaded, as text (`YYYY-MM-DD HH:MM:SS UTC`
///   becomes `<TIME>`) and as `"loaded_at"` seconds (`<EPOCH>`).
///
/// No field is dropped: a member that moves, disappears or changes value still shows.
/// The vGPUs have fixed UUIDs and their one owner is idle, so no other pid, timestamp or
/// generation counter reaches these commands' output; add a rule here (and say why) when
/// one does, rather than leaving a command out.
fn normalise(text: &str, root: &Path, pids: &[u32]) -> String {
    let root = root.display().to_string();
    let mut text = text.replace(&root, "<ROOT>");
    for pid in pids {
        text = replace_number(&text, &pid.to_string(), "<PID>");
    }
    text.lines()
        .map(|line| {
            let line = scheduler_clock_hidden(&pid_column_padded(line));
            format!("{}\n", utc_times_hidden(&line))
        })
        .collect()
}

/// The scheduler's own clock in `policy show --json` (`counters.ticks`, how many ticks ran,
/// and `counters.seconds`, how long it has run): the value becomes `<TICKS>` or
/// `<SECONDS>`; the member stays, so renaming or dropping it still shows.
fn scheduler_clock_hidden(line: &str) -> String {
    for (member, mark) in [
        ("\"ticks\": ", "<TICKS>"),
        ("\"seconds\": ", "<SECONDS>"),
        ("\"loaded_at\": ", "<EPOCH>"),
    ] {
        let indent = line.len() - line.trim_start().len();
        if let Some(value) = line[indent..].strip_prefix(member) {
            let comma = if value.ends_with(',') { "," } else { "" };
            return format!("{}{member}{mark}{comma}", &line[..indent]);
        }
    }
    line.to_string()
}

/// `line` with every `YYYY-MM-DD HH:MM:SS UTC` (how `status` prints a time) as `<TIME>`.
fn utc_times_hidden(line: &str) -> String {
    const SHAPE: &str = "dddd-dd-dd dd:dd:dd UTC";
    let fits = |s: &str| {
        s.len() >= SHAPE.len()
            && s.bytes().zip(SHAPE.bytes()).all(|(c, m)| match m {
                b'd' => c.is_ascii_digit(),
                m => c == m,
            })
    };
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while !rest.is_empty() {
        if rest.is_char_boundary(0) && fits(rest) {
            out.push_str("<TIME>");
            rest = &rest[SHAPE.len()..];
        } else {
            let c = rest.chars().next().unwrap_or_default();
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// A table line whose first column is the pid (`PID` in the header, `<PID>` in a row), with
/// the spaces after that column made two: the column is as wide as the pid's digits, which
/// differ from run to run.
fn pid_column_padded(line: &str) -> String {
    let indent = line.len() - line.trim_start().len();
    let rest = &line[indent..];
    for head in ["<PID>  ", "PID  "] {
        if let Some(after) = rest.strip_prefix(head) {
            return format!("{}{head}{}", &line[..indent], after.trim_start());
        }
    }
    line.to_string()
}

/// `text` with each occurrence of the decimal `number` that is a whole number (no digit on
/// either side) replaced by `with`.
fn replace_number(text: &str, number: &str, with: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(number) {
        let before = rest[..at].chars().next_back();
        let after = rest[at + number.len()..].chars().next();
        out.push_str(&rest[..at]);
        if before.is_some_and(|c| c.is_ascii_digit()) || after.is_some_and(|c| c.is_ascii_digit()) {
            out.push_str(number);
        } else {
            out.push_str(with);
        }
        rest = &rest[at + number.len()..];
    }
    out.push_str(rest);
    out
}

/// Where `expected` and `actual` first differ, as a readable report, or `None` when equal.
fn first_difference(name: &str, expected: &str, actual: &str) -> Option<String> {
    if expected == actual {
        return None;
    }
    let exp: Vec<&str> = expected.lines().collect();
    let act: Vec<&str> = actual.lines().collect();
    let line = (0..exp.len().max(act.len()))
        .find(|&i| exp.get(i) != act.get(i))
        .unwrap_or(exp.len().min(act.len()));
    let show =
        |l: Option<&&str>| l.map_or_else(|| "<end of output>".to_string(), |s| s.to_string());
    Some(format!(
        "=== {name}: differs at line {}\n  expected: {}\n  actual:   {}\n--- expected ---\n{expected}--- actual ---\n{actual}",
        line + 1,
        show(exp.get(line)),
        show(act.get(line)),
    ))
}

/// Poll `f` every 50 ms for up to 10 s; whether it became true.
fn wait_for(f: impl FnMut() -> bool) -> bool {
    wait_up_to(std::time::Duration::from_secs(10), f)
}

/// The commands covered, each run as text (`<name>.txt`) and under `--json` (`<name>.json`).
fn cases() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        ("types", vec!["types"]),
        ("parents", vec!["parents"]),
        ("list", vec!["list"]),
        ("list-defined", vec!["list", "--defined"]),
        ("show", vec!["show", RUNNING]),
        ("show-defined", vec!["show", DEFINED]),
        ("policy-show", vec!["policy", "show"]),
        ("xml", vec!["xml", RUNNING]),
        ("qemu-args", vec!["qemu-args", RUNNING]),
        ("status", vec!["status"]),
        ("error-show-absent", vec!["show", ABSENT]),
    ]
}

#[test]
fn main_commands_print_what_testdata_golden_expects_in_text_and_json() {
    if skip(
        "main_commands_print_what_testdata_golden_expects",
        require_root_and_fuse(),
    ) {
        return;
    }
    let sim = SimHost::start(SimModel::GvmSim, 2);
    let root = sim.root();
    let daemon = Daemon::start(root);
    ok(
        root,
        &[
            "create",
            "--type",
            "sim-10c",
            "--uuid",
            RUNNING,
            "--parent",
            "0000:3b:00.0",
        ],
    );
    ok(
        root,
        &[
            "define",
            "--uuid",
            DEFINED,
            "--parent",
            "0000:3c:00.0",
            "--type",
            "sim-4c",
        ],
    );
    // The daemon learns of a created vGPU from the kernel's tree, not from the CLI's call:
    // wait until it reports both before recording anything.
    assert!(
        wait_for(|| cli(root, &["show", RUNNING]).status.success()
            && cli(root, &["show", DEFINED]).status.success()),
        "gvm-vgpud did not report {RUNNING} and {DEFINED} within 10 s"
    );
    // One idle owner process holding 1 GiB, so `show` and `policy show` have an owner, its
    // gcgroup and its GPU to print; idle, so no counter moves between runs.
    sim.control(&format!("spawn {RUNNING} memory=1073741824 busy=0"))
        .unwrap();
    assert!(
        wait_for(|| {
            let o = cli(root, &["--json", "show", RUNNING]);
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            v["vgpu"]["owner_details"][0]["gcgroups"][0]["memory_current"] == 1u64 << 30
        }),
        "gvm-vgpud did not report the owner of {RUNNING} within 10 s"
    );
    // A stored policy on the second GPU, so `policy show` has a GPU entry to print.
    ok(root, &["policy", "set", "equal-share", "--gpu", "1"]);
    // The scheduler reports an achieved share once a whole window (1 s) has passed since a
    // report first asked; the owner is idle, so it is then 0.0 and stays so. Wait for it,
    // so the files never depend on how fast this machine got here.
    assert!(
        wait_for(|| {
            let o = cli(root, &["--json", "policy", "show"]);
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            v["policy"]["gpus"][0]["vgpus"][0]["achieved"].is_number()
        }),
        "gvm-vgpud reported no achieved share for {RUNNING} within 10 s"
    );
    let pids: Vec<u32> = sim
        .owners()
        .iter()
        .map(|row| row[0].parse().unwrap())
        .chain([daemon.0.id()])
        .collect();

    let update = std::env::var(UPDATE_VAR).is_ok_and(|v| v == "1");
    let dir = golden_dir();
    if update {
        std::fs::create_dir_all(&dir).unwrap();
    }
    let mut failures = Vec::new();
    for (name, args) in cases() {
        for json in [false, true] {
            let mut all: Vec<&str> = if json { vec!["--json"] } else { vec![] };
            all.extend_from_slice(&args);
            let actual = normalise(&recorded(&cli(root, &all)), root, &pids);
            let file = dir.join(format!("{name}.{}", if json { "json" } else { "txt" }));
            if update {
                std::fs::write(&file, &actual).unwrap();
                continue;
            }
            let expected = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| format!("<cannot read {}: {e}>\n", file.display()));
            if let Some(report) =
                first_difference(&format!("gvm-vgpu {}", all.join(" ")), &expected, &actual)
            {
                failures.push(format!("{report}(file {})\n", file.display()));
            }
        }
    }
    // A file no case writes any more is stale: it would still read as expected output.
    let written: Vec<String> = cases()
        .iter()
        .flat_map(|(name, _)| [format!("{name}.txt"), format!("{name}.json")])
        .collect();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let file = entry.unwrap().file_name().to_string_lossy().into_owned();
        if !written.contains(&file) {
            failures.push(format!(
                "=== {file}: no command writes it; remove {}\n",
                dir.join(&file).display()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} output(s) differ from crates/cli/testdata/golden/:\n\n{}\n\
         If the change is intended, regenerate and review the diff:\n  \
         {UPDATE_VAR}=1 cargo test -p gvm-vgpu-cli --test golden\n  \
         git diff crates/cli/testdata/golden/",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn normalise_rewrites_the_root_and_the_daemon_pid_and_nothing_else() {
    let root = Path::new("/tmp/gvm-sim-test.77.0.123");
    let text = "path /tmp/gvm-sim-test.77.0.123/sys/x pid 4242 not 142420 nor 42420 memory 4242\n";
    assert_eq!(
        normalise(text, root, &[4242]),
        "path <ROOT>/sys/x pid <PID> not 142420 nor 42420 memory <PID>\n"
    );
    assert_eq!(
        normalise("limit 10737418240 pid 77\n", root, &[4242, 77]),
        "limit 10737418240 pid <PID>\n"
    );
}

#[test]
fn the_pid_column_is_padded_to_two_spaces_in_the_header_and_the_rows_only() {
    let table = "  owners:\n    PID      FOUND BY\n    <PID>    environment\n    PIDX  y\n";
    assert_eq!(
        normalise(table, Path::new("/r"), &[]),
        "  owners:\n    PID  FOUND BY\n    <PID>  environment\n    PIDX  y\n"
    );
}

#[test]
fn the_scheduler_clock_values_are_hidden_and_their_members_kept() {
    let json = "  \"counters\": {\n    \"ticks\": 12,\n    \"seconds\": 0.25\n  },\n  \"slice_us\": 2048\n";
    assert_eq!(
        normalise(json, Path::new("/r"), &[]),
        "  \"counters\": {\n    \"ticks\": <TICKS>,\n    \"seconds\": <SECONDS>\n  },\n  \"slice_us\": 2048\n"
    );
}

#[test]
fn first_difference_names_the_line_and_both_sides() {
    assert_eq!(first_difference("x", "a\nb\n", "a\nb\n"), None);
    let report = first_difference("x", "a\nb\nc\n", "a\nB\nc\n").unwrap();
    assert!(report.contains("differs at line 2"), "{report}");
    assert!(report.contains("expected: b"), "{report}");
    assert!(report.contains("actual:   B"), "{report}");
    let shorter = first_difference("x", "a\nb\n", "a\n").unwrap();
    assert!(shorter.contains("actual:   <end of output>"), "{shorter}");
}
