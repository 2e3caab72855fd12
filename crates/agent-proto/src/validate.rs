//! Decoding and checking one line: UTF-8, JSON, version, then every field.
//!
//! Pure functions, used by [`crate::IngestSession`] and usable on their own
//! (a test tool can check an agent's output with [`parse_line`]).

use crate::decode::Envelope;
use crate::error::{log_safe, Violation};
use crate::message::{
    Hello, Message, Report, MAX_CMDLINE_BYTES, MAX_COUNTER, MAX_GPUS, MAX_GPU_INDEX,
    MAX_MEMORY_BYTES, MAX_PID, MAX_PROCESSES, MAX_STRING_BYTES, PROTOCOL_VERSION,
};

/// Decode one line (without its newline) into a message, checking UTF-8, JSON and
/// the version. Fields are not range-checked here: see [`check_hello`] and
/// [`check_report`].
///
/// A valid line is decoded in one pass straight into its [`Hello`] or [`Report`]
/// (no intermediate tree). Only a line that fails is looked at again, leniently,
/// to tell a newer protocol version from a malformed message.
pub fn parse_line(line: &[u8]) -> Result<Message, Violation> {
    let text = std::str::from_utf8(line).map_err(|e| Violation::InvalidUtf8 {
        valid_up_to: e.valid_up_to(),
    })?;
    let malformed = |e: serde_json::Error| Violation::Malformed {
        detail: log_safe(&e.to_string(), 160),
    };
    match serde_json::from_str::<Message>(text) {
        Ok(message) => Ok(message),
        Err(first) => {
            let envelope: Envelope = serde_json::from_str(text).map_err(malformed)?;
            if envelope.v != u64::from(PROTOCOL_VERSION) {
                return Err(Violation::UnsupportedVersion {
                    found: envelope.v,
                    supported: PROTOCOL_VERSION,
                });
            }
            Err(malformed(first))
        }
    }
}

pub(crate) fn check_str(
    field: impl FnOnce() -> String,
    s: &str,
    max: usize,
) -> Result<(), Violation> {
    if s.len() > max {
        return Err(Violation::StringTooLong {
            field: field(),
            len: s.len(),
            max,
        });
    }
    if has_control(s) {
        return Err(Violation::ControlCharacter { field: field() });
    }
    Ok(())
}

/// Whether `s` holds a control character (`char::is_control`: C0, DEL, C1). Plain
/// printable ASCII, nearly every string an agent sends, is settled byte by byte
/// without decoding characters.
fn has_control(s: &str) -> bool {
    if s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return false;
    }
    s.chars().any(char::is_control)
}

pub(crate) fn check_range(
    field: impl FnOnce() -> String,
    value: u64,
    min: u64,
    max: u64,
) -> Result<(), Violation> {
    if value < min || value > max {
        return Err(Violation::OutOfRange {
            field: field(),
            value,
            min,
            max,
        });
    }
    Ok(())
}

fn check_pct(field: impl FnOnce() -> String, pct: Option<u32>) -> Result<(), Violation> {
    match pct {
        Some(p) => check_range(field, u64::from(p), 0, 100),
        None => Ok(()),
    }
}

fn check_memory(field: impl FnOnce() -> String, bytes: Option<u64>) -> Result<(), Violation> {
    match bytes {
        Some(b) => check_range(field, b, 0, MAX_MEMORY_BYTES),
        None => Ok(()),
    }
}

/// Check every field of a hello.
pub fn check_hello(h: &Hello) -> Result<(), Violation> {
    check_str(|| "agent".into(), &h.agent, MAX_STRING_BYTES)?;
    check_str(|| "os".into(), &h.os, MAX_STRING_BYTES)?;
    check_str(|| "kernel".into(), &h.kernel, MAX_STRING_BYTES)?;
    if let Some(d) = &h.driver {
        check_str(|| "driver".into(), d, MAX_STRING_BYTES)?;
    }
    if let Some(p) = h.protocol {
        check_range(
            || "protocol".into(),
            u64::from(p),
            1,
            u64::from(crate::v2::AGENT_PROTOCOL),
        )?;
    }
    if h.gpus.len() > MAX_GPUS {
        return Err(Violation::TooMany {
            field: "gpus",
            count: h.gpus.len(),
            max: MAX_GPUS,
        });
    }
    let mut seen = Vec::with_capacity(h.gpus.len());
    for (i, g) in h.gpus.iter().enumerate() {
        check_range(
            || format!("gpus[{i}].index"),
            u64::from(g.index),
            0,
            u64::from(MAX_GPU_INDEX),
        )?;
        if seen.contains(&g.index) {
            return Err(Violation::DuplicateGpu {
                field: format!("gpus[{i}].index"),
                index: g.index,
            });
        }
        seen.push(g.index);
        check_str(|| format!("gpus[{i}].name"), &g.name, MAX_STRING_BYTES)?;
        if let Some(u) = &g.uuid {
            check_str(|| format!("gpus[{i}].uuid"), u, MAX_STRING_BYTES)?;
        }
        check_memory(
            || format!("gpus[{i}].memory_total_bytes"),
            g.memory_total_bytes,
        )?;
    }
    Ok(())
}

/// Check every field of a report against the connection's hello and the last
/// accepted sequence number.
pub fn check_report(r: &Report, hello: &Hello, last_seq: Option<u64>) -> Result<(), Violation> {
    check_range(|| "seq".into(), r.seq, 1, MAX_COUNTER)?;
    if let Some(last) = last_seq {
        if r.seq <= last {
            return Err(Violation::SeqNotIncreasing { seq: r.seq, last });
        }
    }
    check_range(|| "ts_ms".into(), r.ts_ms, 0, MAX_COUNTER)?;
    check_range(
        || "processes_omitted".into(),
        r.processes_omitted,
        0,
        MAX_COUNTER,
    )?;
    if r.gpus.len() > MAX_GPUS {
        return Err(Violation::TooMany {
            field: "gpus",
            count: r.gpus.len(),
            max: MAX_GPUS,
        });
    }
    if r.processes.len() > MAX_PROCESSES {
        return Err(Violation::TooMany {
            field: "processes",
            count: r.processes.len(),
            max: MAX_PROCESSES,
        });
    }
    let known = |index: u32| hello.gpus.iter().any(|g| g.index == index);
    let mut seen = Vec::with_capacity(r.gpus.len());
    for (i, g) in r.gpus.iter().enumerate() {
        if !known(g.index) {
            return Err(Violation::UnknownGpu {
                field: format!("gpus[{i}].index"),
                index: g.index,
            });
        }
        if seen.contains(&g.index) {
            return Err(Violation::DuplicateGpu {
                field: format!("gpus[{i}].index"),
                index: g.index,
            });
        }
        seen.push(g.index);
        check_pct(|| format!("gpus[{i}].util_sm_pct"), g.util_sm_pct)?;
        check_pct(|| format!("gpus[{i}].util_mem_pct"), g.util_mem_pct)?;
        check_memory(
            || format!("gpus[{i}].memory_used_bytes"),
            g.memory_used_bytes,
        )?;
    }
    for (i, p) in r.processes.iter().enumerate() {
        check_range(
            || format!("processes[{i}].pid"),
            u64::from(p.pid),
            1,
            u64::from(MAX_PID),
        )?;
        check_str(|| format!("processes[{i}].name"), &p.name, MAX_STRING_BYTES)?;
        check_str(
            || format!("processes[{i}].cmdline"),
            &p.cmdline,
            MAX_CMDLINE_BYTES,
        )?;
        if let Some(gpu) = p.gpu {
            if !known(gpu) {
                return Err(Violation::UnknownGpu {
                    field: format!("processes[{i}].gpu"),
                    index: gpu,
                });
            }
        }
        check_memory(|| format!("processes[{i}].memory_bytes"), p.memory_bytes)?;
        check_pct(|| format!("processes[{i}].sm_pct"), p.sm_pct)?;
        check_pct(|| format!("processes[{i}].mem_pct"), p.mem_pct)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{CollectorKind, GpuInfo, GpuSample, ProcessSample};

    fn hello() -> Hello {
        Hello {
            v: 1,
            agent: "0.1.0".into(),
            os: "Debian".into(),
            kernel: "6.1".into(),
            driver: None,
            protocol: None,
            collector: CollectorKind::Nvml,
            gpus: vec![GpuInfo {
                index: 0,
                name: "H100".into(),
                uuid: None,
                memory_total_bytes: Some(80 << 30),
            }],
        }
    }

    fn report() -> Report {
        Report {
            v: 1,
            seq: 5,
            ts_ms: 1000,
            gpus: vec![GpuSample {
                index: 0,
                util_sm_pct: Some(50),
                util_mem_pct: Some(10),
                memory_used_bytes: Some(1 << 30),
            }],
            processes: vec![ProcessSample {
                pid: 42,
                name: "python3".into(),
                cmdline: "python3 x.py".into(),
                gpu: Some(0),
                memory_bytes: Some(1 << 30),
                sm_pct: Some(40),
                mem_pct: None,
            }],
            processes_omitted: 0,
        }
    }

    #[test]
    fn a_good_report_passes() {
        assert_eq!(check_report(&report(), &hello(), Some(4)), Ok(()));
        assert_eq!(check_hello(&hello()), Ok(()));
    }

    #[test]
    fn each_bad_field_is_named() {
        let h = hello();
        let mut r = report();
        r.processes[0].sm_pct = Some(101);
        assert_eq!(
            check_report(&r, &h, None),
            Err(Violation::OutOfRange {
                field: "processes[0].sm_pct".into(),
                value: 101,
                min: 0,
                max: 100
            })
        );
        let mut r = report();
        r.processes[0].pid = MAX_PID + 1;
        assert!(
            matches!(check_report(&r, &h, None), Err(Violation::OutOfRange { field, .. }) if field == "processes[0].pid")
        );
        let mut r = report();
        r.gpus[0].memory_used_bytes = Some(MAX_MEMORY_BYTES + 1);
        assert!(
            matches!(check_report(&r, &h, None), Err(Violation::OutOfRange { field, .. }) if field == "gpus[0].memory_used_bytes")
        );
        let mut r = report();
        r.processes[0].gpu = Some(3);
        assert!(matches!(
            check_report(&r, &h, None),
            Err(Violation::UnknownGpu { index: 3, .. })
        ));
        let mut r = report();
        r.processes[0].cmdline = "a".repeat(MAX_CMDLINE_BYTES + 1);
        assert!(matches!(
            check_report(&r, &h, None),
            Err(Violation::StringTooLong {
                max: MAX_CMDLINE_BYTES,
                ..
            })
        ));
        let mut r = report();
        r.processes[0].name = "evil\x1b[2J".into();
        assert!(matches!(
            check_report(&r, &h, None),
            Err(Violation::ControlCharacter { .. })
        ));
        let mut r = report();
        r.gpus.push(r.gpus[0].clone());
        assert!(matches!(
            check_report(&r, &h, None),
            Err(Violation::DuplicateGpu { index: 0, .. })
        ));
        assert_eq!(
            check_report(&report(), &h, Some(5)),
            Err(Violation::SeqNotIncreasing { seq: 5, last: 5 })
        );
    }

    #[test]
    fn control_characters_are_found_in_ascii_and_beyond() {
        for (s, expected) in [
            ("python3 train.py --rank 1", false),
            ("", false),
            ("tab\there", true),
            ("del\x7f", true),
            ("c1\u{85}", true),
            ("é and ü", false),
            ("é\u{9f}", true),
        ] {
            assert_eq!(has_control(s), expected, "{s:?}");
            assert_eq!(has_control(s), s.chars().any(char::is_control), "{s:?}");
        }
    }

    #[test]
    fn hello_limits() {
        let mut h = hello();
        h.os = "o".repeat(MAX_STRING_BYTES + 1);
        assert!(
            matches!(check_hello(&h), Err(Violation::StringTooLong { field, .. }) if field == "os")
        );
        let mut h = hello();
        h.gpus = (0..=MAX_GPUS as u32)
            .map(|index| GpuInfo {
                index,
                name: "g".into(),
                uuid: None,
                memory_total_bytes: None,
            })
            .collect();
        assert!(matches!(
            check_hello(&h),
            Err(Violation::TooMany { field: "gpus", .. })
        ));
    }

    #[test]
    fn parse_reports_utf8_json_and_version_problems() {
        assert_eq!(
            parse_line(b"{\"v\":1,\xff}"),
            Err(Violation::InvalidUtf8 { valid_up_to: 7 })
        );
        assert!(matches!(
            parse_line(b"{not json"),
            Err(Violation::Malformed { .. })
        ));
        assert_eq!(
            parse_line(br#"{"v":2,"type":"telemetry","whatever":[1]}"#),
            Err(Violation::UnsupportedVersion {
                found: 2,
                supported: 1
            })
        );
        // Absurd numbers are JSON type errors, not silent wrap-arounds.
        for n in ["-1", "1e30", "1.5", "18446744073709551616"] {
            let line = format!(
                r#"{{"type":"report","v":1,"seq":{n},"ts_ms":0,"gpus":[],"processes":[]}}"#
            );
            assert!(
                matches!(
                    parse_line(line.as_bytes()),
                    Err(Violation::Malformed { .. })
                ),
                "{n}"
            );
        }
        // A guest-chosen field name is quoted log-safely and briefly.
        let line = format!(
            r#"{{"type":"report","v":1,"seq":1,"ts_ms":0,"gpus":[],"processes":[],"{}":0}}"#,
            "\\u001b".repeat(1000)
        );
        match parse_line(line.as_bytes()) {
            Err(Violation::Malformed { detail }) => {
                assert!(detail.chars().count() <= 161, "{detail}");
                assert!(!detail.contains('\x1b'));
            }
            other => panic!("{other:?}"),
        }
    }
}
