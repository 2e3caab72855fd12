//! `gvm-vgpu stats <domain|uuid>`: what a VM's guest agent reports.
//!
//! Inside a VM, `gvm-vgpu-agent` lists the processes that use the GPU; gvm-vgpud
//! reads its virtio-serial channel, validates every message and attributes it to
//! the VM by the channel alone. This command asks the daemon (`guest_stats`) and
//! prints, per channel, the agent, the channel state and the guest's processes.
//!
//! Every string the guest chose (agent, OS, kernel, driver and GPU names, process names
//! and command lines) and every string derived from what it sent (the problem line), and
//! the domain name, is printed through [`guest_text`]: bidi, zero-width and control
//! characters appear escaped as `\u{…}`, never raw. `--json` prints the API's JSON as it is.

use std::io::Write;

use anyhow::Result;
use gvm_catalog::ByteSize;
use gvm_proto::GuestAgentInfo;

use super::{managed, write_json};
use crate::context::Context;
use crate::table::Table;
use crate::text::guest_text;

/// `stats TARGET` (or every channel with no target).
pub fn stats(ctx: &Context, target: Option<&str>, out: &mut dyn Write) -> Result<()> {
    let infos = managed::client(ctx)?.guest_stats(target)?;
    if ctx.json {
        return write_json(out, "channels", &infos);
    }
    write_text(&infos, out)
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// The human-readable form: a header per channel, then its process table.
pub fn write_text(infos: &[GuestAgentInfo], out: &mut dyn Write) -> Result<()> {
    for (n, i) in infos.iter().enumerate() {
        if n > 0 {
            writeln!(out)?;
        }
        let who = match (&i.domain, i.uuid) {
            (Some(d), Some(u)) => format!("domain {}, vGPU {u}", guest_text(d)),
            (Some(d), None) => format!("domain {}", guest_text(d)),
            (None, Some(u)) => format!("vGPU {u}"),
            (None, None) => "unattributed".to_string(),
        };
        writeln!(out, "{who}")?;
        writeln!(out, "  channel:    {}", i.socket.display())?;
        let state = if i.connected {
            "connected"
        } else {
            "not connected"
        };
        writeln!(
            out,
            "  state:      {state} ({} connections, {} violations, {} disconnects)",
            i.connections, i.violations, i.disconnects
        )?;
        if let Some(p) = &i.last_problem {
            writeln!(out, "  problem:    {}", guest_text(p))?;
        }
        let Some(s) = &i.stats else {
            writeln!(out, "  agent:      no hello yet")?;
            continue;
        };
        let h = &s.hello;
        writeln!(
            out,
            "  agent:      {} on {} (kernel {}), collector {:?}{}",
            guest_text(&h.agent),
            guest_text(&h.os),
            guest_text(&h.kernel),
            h.collector,
            h.driver
                .as_deref()
                .map(|d| format!(", driver {}", guest_text(d)))
                .unwrap_or_default()
        )?;
        for g in &h.gpus {
            writeln!(
                out,
                "  gpu {}:      {}{}",
                g.index,
                guest_text(&g.name),
                g.memory_total_bytes
                    .map(|b| format!(", {}", ByteSize(b)))
                    .unwrap_or_default()
            )?;
        }
        let Some(r) = &s.last_report else {
            writeln!(out, "  report:     none yet")?;
            continue;
        };
        writeln!(
            out,
            "  report:     seq {}, {} ago, {} processes{}",
            r.seq,
            i.report_age_ms
                .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
                .unwrap_or_else(|| "?".into()),
            r.processes.len(),
            if r.processes_omitted > 0 {
                format!(" (+{} omitted)", r.processes_omitted)
            } else {
                String::new()
            }
        )?;
        let mut t = Table::new(&["PID", "NAME", "GPU", "MEMORY", "SM%", "MEM%", "COMMAND"]);
        for p in &r.processes {
            t.row(vec![
                p.pid.to_string(),
                guest_text(&p.name).into_owned(),
                opt(p.gpu),
                opt(p.memory_bytes.map(ByteSize)),
                opt(p.sm_pct),
                opt(p.mem_pct),
                // Clipped before escaping, so that an escape is never cut in half.
                guest_text(&p.cmdline.chars().take(60).collect::<String>()).into_owned(),
            ]);
        }
        if !t.is_empty() {
            t.write(out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gvm_proto::{GuestCounters, GuestHello, GuestReport, GuestStats, ProcessSample};
    use std::path::PathBuf;

    #[test]
    fn text_shows_the_channel_the_agent_and_each_process() {
        let info = GuestAgentInfo {
            socket: PathBuf::from("/run/gvm-vgpu/agent/x.sock"),
            uuid: None,
            domain: Some("vm1".into()),
            connected: true,
            connections: 1,
            disconnects: 0,
            violations: 3,
            last_problem: Some("line 4: line is not UTF-8".into()),
            report_age_ms: Some(1200),
            stats: Some(GuestStats {
                hello: serde_json::from_str::<GuestHello>(
                    r#"{"v":1,"agent":"0.1.0","os":"Debian 12","kernel":"6.1","collector":"proc","gpus":[]}"#,
                )
                .unwrap(),
                last_report: Some(GuestReport {
                    v: 1,
                    seq: 9,
                    ts_ms: 0,
                    gpus: vec![],
                    processes: vec![ProcessSample {
                        pid: 77,
                        name: "python3".into(),
                        cmdline: "python3 train.py".into(),
                        gpu: Some(0),
                        memory_bytes: Some(2 << 30),
                        sm_pct: None,
                        mem_pct: None,
                    }],
                    processes_omitted: 0,
                }),
                counters: GuestCounters::default(),
            }), enforcement: None,
        };
        let mut out = Vec::new();
        write_text(&[info], &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("domain vm1\n"), "{text}");
        assert!(
            text.contains("connected (1 connections, 3 violations"),
            "{text}"
        );
        assert!(text.contains("problem:    line 4: line is not UTF-8"));
        assert!(text.contains("seq 9, 1.2s ago, 1 processes"), "{text}");
        let row = text.lines().find(|l| l.starts_with("77 ")).unwrap();
        assert!(row.contains("python3") && row.contains("2"), "{row}");
        assert!(row.contains("python3 train.py"));
    }

    #[test]
    fn text_escapes_bidi_zero_width_and_control_characters_in_every_guest_string() {
        let nasty = "x\u{202E}\u{2066}\u{2067}\u{2068}\u{2069}\u{200B}\u{200F}\u{2028}\u{2029}\u{FEFF}\x1b[2J\u{9b}y";
        let hello = serde_json::json!({
            "v": 1, "agent": nasty, "os": nasty, "kernel": nasty, "driver": nasty,
            "collector": "proc", "gpus": [{"index": 0, "name": nasty}],
        });
        let info = GuestAgentInfo {
            socket: PathBuf::from("/run/gvm-vgpu/agent/x.sock"),
            uuid: None,
            domain: Some(nasty.into()),
            connected: true,
            connections: 1,
            disconnects: 0,
            violations: 1,
            last_problem: Some(nasty.into()),
            report_age_ms: Some(0),
            stats: Some(GuestStats {
                hello: serde_json::from_value::<GuestHello>(hello).unwrap(),
                last_report: Some(GuestReport {
                    v: 1,
                    seq: 1,
                    ts_ms: 0,
                    gpus: vec![],
                    processes: vec![ProcessSample {
                        pid: 7,
                        name: nasty.into(),
                        cmdline: nasty.into(),
                        gpu: Some(0),
                        memory_bytes: None,
                        sm_pct: None,
                        mem_pct: None,
                    }],
                    processes_omitted: 0,
                }),
                counters: GuestCounters::default(),
            }),
            enforcement: None,
        };
        let mut out = Vec::new();
        write_text(&[info], &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let raw: Vec<char> = text
            .chars()
            .filter(|&c| c != '\n' && crate::text::must_escape(c))
            .collect();
        assert!(raw.is_empty(), "printed raw: {raw:?} in\n{text}");
        let escaped = "x\\u{202e}\\u{2066}\\u{2067}\\u{2068}\\u{2069}\\u{200b}\\u{200f}\\u{2028}\\u{2029}\\u{feff}\\u{1b}[2J\\u{9b}y";
        // domain, problem, agent + os + kernel + driver (one line), gpu name, process name
        // and command line: each shows the escaped form.
        assert_eq!(text.matches(escaped).count(), 9, "{text}");
    }
}
