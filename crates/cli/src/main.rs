//! `gvm-vgpu`: parse the command line, run the command, print the error chain once.
//!
//! Exit status: 0 success, 1 operation failed, 2 usage error (clap's own code).

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use gvm_error_chain::error_chain;
use gvm_vgpu_cli::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match gvm_vgpu_cli::run(&cli, &mut out) {
        Ok(()) => {
            let _ = out.flush();
            ExitCode::SUCCESS
        }
        Err(err) => {
            let _ = out.flush();
            eprintln!("gvm-vgpu: error: {}", error_chain(&*err));
            ExitCode::from(1)
        }
    }
}
