use crate::message::{CollectorKind, GpuInfo, GpuSample, Message, ProcessSample};
use crate::{parse_line, Hello, Report, Violation};

fn hello() -> Hello {
    Hello {
        v: 1,
        agent: "0.1.0".into(),
        os: "Debian".into(),
        kernel: "6.1".into(),
        driver: Some("580.65".into()),
        protocol: None,
        collector: CollectorKind::Nvml,
        gpus: vec![GpuInfo {
            index: 0,
            name: "H100".into(),
            uuid: Some("GPU-1".into()),
            memory_total_bytes: Some(80 << 30),
        }],
    }
}

fn report() -> Report {
    Report {
        v: 1,
        seq: 9,
        ts_ms: 1234,
        gpus: vec![GpuSample {
            index: 0,
            util_sm_pct: Some(50),
            util_mem_pct: None,
            memory_used_bytes: Some(1 << 30),
        }],
        processes: vec![ProcessSample {
            pid: 42,
            name: "python3".into(),
            cmdline: "python3 x.py".into(),
            gpu: Some(0),
            memory_bytes: Some(1 << 30),
            sm_pct: Some(40),
            mem_pct: Some(3),
        }],
        processes_omitted: 2,
    }
}

fn decode(line: &str) -> Result<Message, String> {
    serde_json::from_str::<Message>(line).map_err(|e| e.to_string())
}

/// The top-level `"key":value` pairs of a flat-enough object written by serde
/// (values here hold no top-level commas outside brackets).
fn pairs(line: &str) -> Vec<String> {
    let inner = &line[1..line.len() - 1];
    let (mut out, mut depth, mut start, mut in_str) = (Vec::new(), 0i32, 0usize, false);
    let bytes = inner.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'"' if i == 0 || bytes[i - 1] != b'\\' => in_str = !in_str,
            b'[' | b'{' if !in_str => depth += 1,
            b']' | b'}' if !in_str => depth -= 1,
            b',' if !in_str && depth == 0 => {
                out.push(inner[start..i].to_string());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(inner[start..].to_string());
    out
}

#[test]
fn both_messages_round_trip() {
    for m in [Message::Hello(hello()), Message::Report(report())] {
        let line = m.to_line().unwrap();
        assert_eq!(decode(&line), Ok(m));
    }
}

#[test]
fn key_order_does_not_matter_even_with_the_type_last() {
    for m in [Message::Hello(hello()), Message::Report(report())] {
        let mut p = pairs(&m.to_line().unwrap());
        assert!(p[0].starts_with(r#""type":"#), "{p:?}");
        // Rotate through every position of the type tag, then reverse everything
        // (gpus before type exercises the late conversion of GPU entries).
        for _ in 0..p.len() {
            p.rotate_left(1);
            let line = format!("{{{}}}", p.join(","));
            assert_eq!(decode(&line), Ok(m.clone()), "{line}");
        }
        p.reverse();
        let line = format!("{{{}}}", p.join(","));
        assert_eq!(decode(&line), Ok(m.clone()), "{line}");
    }
}

#[test]
fn unknown_and_foreign_fields_are_refused_wherever_they_are() {
    let cases = [
        // Unknown at the top, after and before the type.
        (
            r#"{"type":"report","v":1,"seq":1,"ts_ms":1,"gpus":[],"processes":[],"extra":1}"#,
            "extra",
        ),
        (
            r#"{"extra":1,"type":"report","v":1,"seq":1,"ts_ms":1,"gpus":[],"processes":[]}"#,
            "extra",
        ),
        // A hello's field in a report, after and before the type.
        (
            r#"{"type":"report","v":1,"seq":1,"ts_ms":1,"gpus":[],"processes":[],"os":"x"}"#,
            "os",
        ),
        (
            r#"{"os":"x","type":"report","v":1,"seq":1,"ts_ms":1,"gpus":[],"processes":[]}"#,
            "os",
        ),
        // A report's field in a hello.
        (
            r#"{"seq":1,"type":"hello","v":1,"agent":"a","os":"o","kernel":"k","collector":"proc","gpus":[]}"#,
            "seq",
        ),
        // A report's GPU field in a hello's GPU, read before the type.
        (
            r#"{"gpus":[{"index":0,"name":"g","util_sm_pct":5}],"type":"hello","v":1,"agent":"a","os":"o","kernel":"k","collector":"proc"}"#,
            "util_sm_pct",
        ),
        (
            r#"{"gpus":[{"index":0,"name":"g"}],"type":"report","v":1,"seq":1,"ts_ms":1,"processes":[]}"#,
            "name",
        ),
        // Unknown inside a nested entry.
        (
            r#"{"type":"report","v":1,"seq":1,"ts_ms":1,"gpus":[],"processes":[{"pid":1,"name":"a","cmdline":"","evil":1}]}"#,
            "evil",
        ),
    ];
    for (line, field) in cases {
        let err = decode(line).unwrap_err();
        assert!(
            err.contains(&format!("unknown field `{field}`")),
            "{line}: {err}"
        );
    }
}

#[test]
fn missing_duplicate_and_mistyped_fields_are_refused() {
    let missing = decode(r#"{"type":"report","v":1,"ts_ms":1,"gpus":[],"processes":[]}"#);
    assert!(missing.unwrap_err().contains("missing field `seq`"));
    let no_type = decode(r#"{"v":1,"seq":1,"ts_ms":1,"gpus":[],"processes":[]}"#);
    assert!(no_type.unwrap_err().contains("missing field `type`"));
    let twice =
        decode(r#"{"type":"report","v":1,"seq":1,"seq":2,"ts_ms":1,"gpus":[],"processes":[]}"#);
    assert!(twice.unwrap_err().contains("duplicate field `seq`"));
    let twice_type = decode(r#"{"type":"report","type":"report","v":1}"#);
    assert!(twice_type.unwrap_err().contains("duplicate field `type`"));
    let kind = decode(r#"{"type":"telemetry","v":1}"#);
    assert!(kind.unwrap_err().contains("unknown variant `telemetry`"));
    let not_object = decode("[1,2]");
    assert!(not_object.is_err());
    let tag_number = decode(r#"{"type":7,"v":1}"#);
    assert!(tag_number.is_err());
}

#[test]
fn a_null_driver_is_no_driver() {
    let line = r#"{"type":"hello","v":1,"agent":"a","os":"o","kernel":"k","driver":null,"collector":"proc","gpus":[]}"#;
    match decode(line) {
        Ok(Message::Hello(h)) => assert_eq!(h.driver, None),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_newer_version_is_reported_as_such_wherever_v_is() {
    for line in [
        r#"{"v":2,"type":"report","seq":"new-style","shiny":true}"#,
        r#"{"type":"report","shiny":true,"v":2}"#,
        r#"{"type":"hello","gpus":[{"index":0,"name":"g","new":1}],"v":3}"#,
    ] {
        let found = if line.contains("\"v\":3") { 3 } else { 2 };
        assert_eq!(
            parse_line(line.as_bytes()),
            Err(Violation::UnsupportedVersion {
                found,
                supported: 1
            }),
            "{line}"
        );
    }
    // Version 1 with a stray field stays a malformed message naming the field.
    match parse_line(br#"{"type":"report","shiny":true,"v":1}"#) {
        Err(Violation::Malformed { detail }) => assert!(detail.contains("shiny"), "{detail}"),
        other => panic!("{other:?}"),
    }
}
