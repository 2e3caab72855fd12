//! `gvm-vgpu`: parse the command line, run the command, print the error chain once.
//!
//! Exit status: 0 success, 1 operation failed, 2 usage error (clap's own code). Under
//! `--json` a failure, a usage error included, is also one JSON object on stdout
//! (`{"schema": N, "error": {...}}`, see `json_error`).

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use gvm_error_chain::error_chain;
use gvm_vgpu_cli::cli::Cli;
use gvm_vgpu_cli::json_error::{ErrorReport, FailureJson};

fn main() -> ExitCode {
    // `COMPLETE=<shell> gvm-vgpu` prints the shell's registration script, and the shell calls
    // back here to complete a command line; otherwise this returns at once.
    clap_complete::CompleteEnv::with_factory(<Cli as clap::CommandFactory>::command).complete();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() && json_requested() => {
            let _ = e.print();
            print_failure(&FailureJson {
                schema: gvm_proto::JSON_SCHEMA,
                error: usage_error(&e.render().to_string()),
                done: Default::default(),
            });
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
        Err(e) => e.exit(),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match gvm_vgpu_cli::run(&cli, &mut out) {
        Ok(()) => {
            let _ = out.flush();
            ExitCode::SUCCESS
        }
        Err(err) => {
            let _ = out.flush();
            drop(out);
            eprintln!("gvm-vgpu: error: {}", error_chain(&*err));
            if cli.global.json {
                print_failure(&FailureJson::of(&err));
            }
            ExitCode::from(1)
        }
    }
}

/// Whether `--json` is among the options (before a `--`), for a command line clap refused.
fn json_requested() -> bool {
    std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json")
}

/// A usage error as clap renders it (`error: ...`, usage, `tip: ...` lines) as a report:
/// its first line the message, its tip the hint.
fn usage_error(rendered: &str) -> ErrorReport {
    let line = |prefix: &str| {
        rendered
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|s| s.trim().to_string()))
    };
    ErrorReport {
        message: line("error:").unwrap_or_else(|| rendered.trim().to_string()),
        causes: Vec::new(),
        hint: line("tip:").or_else(|| Some("see `gvm-vgpu --help`".into())),
        code: None,
    }
}

/// Write `failure` as JSON on stdout, pretty as every other `--json` output.
fn print_failure(failure: &FailureJson) {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if serde_json::to_writer_pretty(&mut out, failure).is_ok() {
        let _ = writeln!(out);
    }
    let _ = out.flush();
}
