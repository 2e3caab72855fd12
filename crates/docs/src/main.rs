//! `gvm-vgpu-docs OUT`: write gvm-vgpu's man pages to `OUT/man` and shell completions to
//! `OUT/completions` (see the library's documentation for the layout).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        eprintln!("usage: gvm-vgpu-docs OUT_DIR");
        return ExitCode::from(2);
    };
    let out = PathBuf::from(out);
    let pages = match gvm_vgpu_docs::all_pages() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("gvm-vgpu-docs: {e}");
            return ExitCode::FAILURE;
        }
    };
    let missing = gvm_vgpu_docs::missing_references(&pages);
    if !missing.is_empty() {
        for (page, r) in missing {
            eprintln!("gvm-vgpu-docs: {page} cites {r}, which is not generated");
        }
        return ExitCode::FAILURE;
    }
    match gvm_vgpu_docs::generate(&out) {
        Ok(files) => {
            println!(
                "gvm-vgpu-docs: {} files under {}",
                files.len(),
                out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gvm-vgpu-docs: {e}");
            ExitCode::FAILURE
        }
    }
}
