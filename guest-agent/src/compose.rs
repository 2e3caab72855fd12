//! Building the protocol's messages from what the collectors found.
//!
//! Pure except for [`system_info`], which reads `/etc/os-release` and `uname`.
//! Every line produced here fits the host's limits: strings are cleaned and
//! clipped by the collectors, processes are ordered largest memory first and the
//! list is cut (and the cut counted) so that no line exceeds 64 KiB.

use crate::collect::Sample;
use gvm_agent_proto::v2::AGENT_PROTOCOL;
use gvm_agent_proto::{
    clean_text, CollectorKind, EncodeError, GpuInfo, Hello, Message, Report, MAX_LINE_BYTES,
    MAX_STRING_BYTES, PROTOCOL_VERSION,
};
use gvm_host_root::HostRoot;
use std::cmp::Reverse;

/// What the guest is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemInfo {
    /// `PRETTY_NAME` from os-release, or `Linux`.
    pub os: String,
    /// Kernel release.
    pub kernel: String,
}

/// `PRETTY_NAME` (else `NAME`) of an os-release file, unquoted.
pub fn parse_os_release(text: &str) -> Option<String> {
    let get = |key: &str| {
        text.lines().find_map(|l| {
            let v = l.strip_prefix(key)?.strip_prefix('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            (!v.is_empty()).then(|| v.to_owned())
        })
    };
    get("PRETTY_NAME").or_else(|| get("NAME"))
}

/// Read the guest's OS name and kernel release.
pub fn system_info(root: &HostRoot) -> SystemInfo {
    let os = ["/etc/os-release", "/usr/lib/os-release"]
        .iter()
        .find_map(|p| std::fs::read_to_string(root.path(p)).ok())
        .and_then(|t| parse_os_release(&t))
        .unwrap_or_else(|| "Linux".to_owned());
    let kernel = crate::sys::kernel_release().unwrap_or_else(|_| "unknown".to_owned());
    SystemInfo {
        os: clean_text(&os, MAX_STRING_BYTES),
        kernel: clean_text(&kernel, MAX_STRING_BYTES),
    }
}

/// The hello for this agent.
pub fn hello(
    sys: &SystemInfo,
    collector: CollectorKind,
    driver: Option<String>,
    gpus: Vec<GpuInfo>,
) -> Hello {
    Hello {
        v: u64::from(PROTOCOL_VERSION),
        agent: env!("CARGO_PKG_VERSION").to_owned(),
        os: sys.os.clone(),
        kernel: sys.kernel.clone(),
        driver,
        protocol: Some(AGENT_PROTOCOL),
        collector,
        gpus,
    }
}

/// A report from one sample, processes largest memory first (then by pid).
pub fn report(seq: u64, ts_ms: u64, mut sample: Sample) -> Report {
    sample
        .processes
        .sort_by_key(|p| (Reverse(p.memory_bytes.unwrap_or(0)), p.pid, p.gpu));
    Report {
        v: u64::from(PROTOCOL_VERSION),
        seq,
        ts_ms,
        gpus: sample.gpus,
        processes: sample.processes,
        processes_omitted: 0,
    }
}

/// Encode a hello as a newline-terminated line.
pub fn hello_line(h: &Hello) -> Result<Vec<u8>, EncodeError> {
    let mut line = Message::Hello(h.clone()).to_line()?.into_bytes();
    if line.len() > MAX_LINE_BYTES {
        return Err(EncodeError::TooLong {
            len: line.len(),
            max: MAX_LINE_BYTES,
        });
    }
    line.push(b'\n');
    Ok(line)
}

/// Encode a report as a newline-terminated line of at most [`MAX_LINE_BYTES`]
/// (plus the newline), cutting processes as needed.
pub fn report_line(r: &mut Report) -> Result<Vec<u8>, EncodeError> {
    let mut line = r.encode_bounded(MAX_LINE_BYTES)?.into_bytes();
    line.push(b'\n');
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gvm_agent_proto::{IngestSession, ProcessSample, MAX_CMDLINE_BYTES};

    fn proc_entry(pid: u32, mem: Option<u64>) -> ProcessSample {
        ProcessSample {
            pid,
            name: format!("worker-{pid}"),
            cmdline: clean_text(
                &format!("python3 job.py --id {pid} {}", "x".repeat(5000)),
                MAX_CMDLINE_BYTES,
            ),
            gpu: None,
            memory_bytes: mem,
            sm_pct: None,
            mem_pct: None,
        }
    }

    #[test]
    fn os_release_parsing() {
        let t = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(
            parse_os_release(t).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(parse_os_release("NAME=Alpine\n").as_deref(), Some("Alpine"));
        assert_eq!(parse_os_release("ID=x\n"), None);
    }

    #[test]
    fn reports_order_by_memory_and_never_exceed_the_line_limit() {
        let sample = Sample {
            gpus: vec![],
            processes: (1..=2000)
                .map(|p| proc_entry(p, Some(u64::from(p) << 20)))
                .collect(),
        };
        let mut r = report(3, 1000, sample);
        assert_eq!(r.processes[0].pid, 2000, "largest first");
        let line = report_line(&mut r).unwrap();
        assert!(line.len() <= MAX_LINE_BYTES + 1);
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(r.processes.len() as u64 + r.processes_omitted, 2000);
        assert!(r.processes_omitted > 1000);
        // And the host accepts exactly what the agent produced.
        let sys = SystemInfo {
            os: "Debian".into(),
            kernel: "6.1".into(),
        };
        let h = hello(&sys, CollectorKind::Proc, None, vec![]);
        let mut bytes = hello_line(&h).unwrap();
        bytes.extend(&line);
        let mut s = IngestSession::default();
        let ev = s.feed(std::time::Instant::now(), &bytes);
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert_eq!(s.stats().unwrap().last_report.unwrap(), r);
    }

    #[test]
    fn hello_carries_this_agents_version() {
        let sys = SystemInfo {
            os: "o".into(),
            kernel: "k".into(),
        };
        let h = hello(&sys, CollectorKind::Nvml, Some("580".into()), vec![]);
        assert_eq!(h.agent, env!("CARGO_PKG_VERSION"));
        let line = hello_line(&h).unwrap();
        assert!(line.starts_with(br#"{"type":"hello","v":1,"#));
        assert_eq!(
            h.protocol(),
            AGENT_PROTOCOL,
            "the agent says which protocol it speaks"
        );
    }
}
