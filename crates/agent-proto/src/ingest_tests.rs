//! Tests of the ingest state machine, driven by a fake clock.

use super::*;
use crate::message::{CollectorKind, GpuInfo, GpuSample, ProcessSample};

fn t(base: Instant, ms: u64) -> Instant {
    base + Duration::from_millis(ms)
}

fn hello_line() -> Vec<u8> {
    let h = Message::Hello(Hello {
        v: 1,
        agent: "0.1.0".into(),
        os: "Debian GNU/Linux 12".into(),
        kernel: "6.1.0".into(),
        driver: Some("580.65".into()),
        protocol: None,
        collector: CollectorKind::Nvml,
        gpus: vec![GpuInfo {
            index: 0,
            name: "NVIDIA H100".into(),
            uuid: Some("GPU-1234".into()),
            memory_total_bytes: Some(80 << 30),
        }],
    });
    let mut l = h.to_line().unwrap().into_bytes();
    l.push(b'\n');
    l
}

fn report_line(seq: u64) -> Vec<u8> {
    let r = Message::Report(Report {
        v: 1,
        seq,
        ts_ms: 1_700_000_000_000 + seq,
        gpus: vec![GpuSample {
            index: 0,
            util_sm_pct: Some(90),
            util_mem_pct: Some(30),
            memory_used_bytes: Some(5 << 30),
        }],
        processes: vec![ProcessSample {
            pid: 1234,
            name: "python3".into(),
            cmdline: "python3 train.py".into(),
            gpu: Some(0),
            memory_bytes: Some(4 << 30),
            sm_pct: Some(88),
            mem_pct: Some(29),
        }],
        processes_omitted: 0,
    });
    let mut l = r.to_line().unwrap().into_bytes();
    l.push(b'\n');
    l
}

fn violations(events: &[Event]) -> Vec<&Violation> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Violation { violation, .. } => Some(violation),
            _ => None,
        })
        .collect()
}

fn reports(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::Report(_)))
        .count()
}

fn disconnected(events: &[Event]) -> bool {
    events.iter().any(|e| matches!(e, Event::Disconnect { .. }))
}

#[test]
fn hello_then_reports_are_accepted_and_snapshotted() {
    let base = Instant::now();
    let mut s = IngestSession::default();
    assert!(s.stats().is_none());
    let ev = s.feed(base, &hello_line());
    assert!(matches!(&ev[..], [Event::Hello(h)] if h.gpus.len() == 1));
    let ev = s.feed(t(base, 1000), &report_line(1));
    assert!(matches!(&ev[..], [Event::Report(r)] if r.seq == 1));
    let stats = s.stats().unwrap();
    assert_eq!(stats.hello.driver.as_deref(), Some("580.65"));
    assert_eq!(stats.last_report.unwrap().processes[0].pid, 1234);
    assert_eq!(stats.counters.reports, 1);
    assert_eq!(stats.counters.hellos, 1);
    assert_eq!(s.last_report_at(), Some(t(base, 1000)));
}

#[test]
fn byte_at_a_time_framing_gives_the_same_events() {
    let base = Instant::now();
    let mut all = hello_line();
    all.extend(report_line(1));
    all.extend(b"\r\n".iter());
    all.extend(report_line(2));
    let mut s = IngestSession::default();
    let mut events = Vec::new();
    for (i, b) in all.iter().enumerate() {
        events.extend(s.feed(t(base, i as u64 / 100), std::slice::from_ref(b)));
    }
    assert!(matches!(events[0], Event::Hello(_)));
    assert_eq!(reports(&events), 2);
    assert!(violations(&events).is_empty(), "{events:?}");
}

#[test]
fn reports_before_hello_are_dropped_but_not_held_against_the_guest() {
    let base = Instant::now();
    let mut s = IngestSession::default();
    let mut events = Vec::new();
    for seq in 1..=10 {
        events.extend(s.feed(t(base, seq * 1000), &report_line(seq)));
    }
    assert_eq!(reports(&events), 0);
    assert_eq!(violations(&events).len(), 10);
    assert!(violations(&events)
        .iter()
        .all(|v| **v == Violation::ReportBeforeHello));
    assert!(!disconnected(&events));
    let ev = s.feed(t(base, 11_000), &hello_line());
    assert!(matches!(ev[0], Event::Hello(_)));
    assert_eq!(reports(&s.feed(t(base, 12_000), &report_line(11))), 1);
}

#[test]
fn an_oversized_line_is_reported_once_and_never_buffered() {
    let base = Instant::now();
    let mut s = IngestSession::default();
    s.feed(base, &hello_line());
    let mut events = Vec::new();
    // 100 KiB of a line in 4 KiB chunks, then its newline, then a good report.
    for i in 0..25 {
        events.extend(s.feed(t(base, i), &[b'x'; 4096]));
        assert!(s.buffered_bytes() <= MAX_LINE_BYTES);
        assert!(s.buffer_capacity() <= MAX_LINE_BYTES + 1);
    }
    events.extend(s.feed(t(base, 30), b"tail of the long line\n"));
    events.extend(s.feed(t(base, 40), &report_line(1)));
    assert_eq!(
        violations(&events),
        vec![&Violation::LineTooLong {
            limit: MAX_LINE_BYTES
        }]
    );
    assert_eq!(reports(&events), 1, "the next line is read normally");
    assert!(s.counters().discarded_bytes >= 100 * 1024);
}

#[test]
fn a_line_of_exactly_the_limit_is_accepted_one_more_byte_is_not() {
    let base = Instant::now();
    let mut s = IngestSession::default();
    s.feed(base, &hello_line());
    let mut line = report_line(1);
    line.pop();
    let pad = MAX_LINE_BYTES - line.len();
    let mut exact = line.clone();
    exact.extend(std::iter::repeat_n(b' ', pad));
    exact.push(b'\n');
    assert_eq!(reports(&s.feed(t(base, 1), &exact)), 1);
    let mut over = report_line(2);
    over.pop();
    over.extend(std::iter::repeat_n(b' ', pad + 1));
    over.push(b'\n');
    let ev = s.feed(t(base, 2), &over);
    assert_eq!(
        violations(&ev),
        vec![&Violation::LineTooLong {
            limit: MAX_LINE_BYTES
        }]
    );
}

#[test]
fn a_session_closed_by_a_line_split_across_reads_releases_its_buffer() {
    let now = Instant::now();
    let mut s = IngestSession::default();
    // Five junk lines, then a sixth whose newline comes in the next read: the line that
    // tips the session is assembled in the buffer.
    let events = s.feed(now, b"a\nb\nc\nd\ne\nf");
    assert!(!disconnected(&events));
    assert!(s.buffer_capacity() > 0);
    let events = s.feed(now, b"\n");
    assert!(disconnected(&events), "{events:?}");
    assert!(s.is_closed());
    assert_eq!((s.buffered_bytes(), s.buffer_capacity()), (0, 0));
}

#[test]
fn endless_junk_without_newlines_ends_in_a_disconnect_with_bounded_memory() {
    let base = Instant::now();
    let mut s = IngestSession::default();
    let chunk = vec![b'a'; 65536];
    let mut events = Vec::new();
    for i in 0..160 {
        // 10 MiB
        events.extend(s.feed(t(base, i), &chunk));
        assert!(s.buffer_capacity() <= MAX_LINE_BYTES + 1);
        if s.is_closed() {
            break;
        }
    }
    assert!(disconnected(&events));
    assert_eq!(
        violations(&events).len(),
        Limits::default().max_violations + 1
    );
    assert!(s.feed(t(base, 200), &report_line(1)).is_empty());
    assert_eq!(s.next_deadline(), None);
}

#[test]
fn invalid_utf8_json_and_absurd_numbers_are_typed_violations() {
    let base = Instant::now();
    let mut s = IngestSession::default();
    s.feed(base, &hello_line());
    let ev = s.feed(t(base, 1000), b"\xc3\x28 not utf8\n");
    assert_eq!(
        violations(&ev),
        vec![&Violation::InvalidUtf8 { valid_up_to: 0 }]
    );
    let ev = s.feed(t(base, 2000), b"{\"type\":\"report\",\n");
    assert!(matches!(violations(&ev)[..], [Violation::Malformed { .. }]));
    let absurd = br#"{"type":"report","v":1,"seq":1,"ts_ms":0,"gpus":[],"processes":[{"pid":99999999,"name":"x","cmdline":""}]}"#;
    let mut line = absurd.to_vec();
    line.push(b'\n');
    let ev = s.feed(t(base, 3000), &line);
    assert!(matches!(
        violations(&ev)[..],
        [Violation::OutOfRange {
            value: 99_999_999,
            ..
        }]
    ));
    let ev = s.feed(
        t(base, 4000),
        b"{\"type\":\"report\",\"v\":1,\"seq\":1e400}\n",
    );
    assert!(matches!(violations(&ev)[..], [Violation::Malformed { .. }]));
    assert!(!s.is_closed(), "four violations are within the tolerance");
    let ev = s.feed(t(base, 5000), b"[]\n");
    assert_eq!(violations(&ev).len(), 1);
    assert!(!disconnected(&ev));
    let ev = s.feed(t(base, 6000), b"null\n");
    assert!(disconnected(&ev), "the sixth violation in 10 s disconnects");
    match ev.last() {
        Some(Event::Disconnect {
            reason: DisconnectReason::TooManyViolations { count, .. },
            reconnect_after,
        }) => {
            assert_eq!(*count, 6);
            assert_eq!(*reconnect_after, Limits::default().reconnect_after);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn violations_spread_out_between_valid_reports_are_tolerated() {
    let base = Instant::now();
    let mut s = IngestSession::default();
    s.feed(base, &hello_line());
    for i in 0..50 {
        let ev = s.feed(t(base, i * 2500), b"garbage\n");
        assert_eq!(violations(&ev).len(), 1);
        assert!(!disconnected(&ev), "at violation {i}");
        if i % 5 == 4 {
            assert_eq!(
                reports(&s.feed(t(base, i * 2500 + 1), &report_line(i + 1))),
                1
            );
        }
    }
    assert_eq!(s.counters().violations, 50);
}

#[test]
fn slow_garbage_with_nothing_valid_is_disconnected() {
    let base = Instant::now();
    let mut s = IngestSession::default();
    s.feed(base, &hello_line());
    let max = Limits::default().max_consecutive_violations as u64;
    for i in 0..max {
        assert!(!disconnected(&s.feed(t(base, i * 60_000), b"garbage\n")));
    }
    let ev = s.feed(t(base, max * 60_000), b"garbage\n");
    assert!(matches!(
        ev.last(),
        Some(Event::Disconnect {
            reason: DisconnectReason::NothingValid { count, .. },
            ..
        }) if *count as u64 == max + 1
    ));
}

#[test]
fn ten_thousand_messages_a_second_are_throttled_then_disconnected() {
    let base = Instant::now();
    let limits = Limits::default();
    let mut s = IngestSession::new(limits.clone());
    s.feed(base, &hello_line());
    let mut seq = 0;
    let mut first_second = Vec::new();
    // 10,000 reports in one second, in batches of 100 every 10 ms.
    for batch in 0..100 {
        let mut bytes = Vec::new();
        for _ in 0..100 {
            seq += 1;
            bytes.extend(report_line(seq));
        }
        first_second.extend(s.feed(t(base, batch * 10), &bytes));
    }
    let accepted = reports(&first_second);
    // The hello took one token; the rest of the burst and ~20 refills pass.
    assert!(
        accepted >= limits.burst as usize - 1
            && accepted <= (limits.burst + limits.lines_per_second) as usize,
        "accepted {accepted}"
    );
    let rate = violations(&first_second);
    assert!(
        !rate.is_empty() && rate.len() <= 2,
        "rate violations are coalesced: {rate:?}"
    );
    let dropped: u64 = rate
        .iter()
        .map(|v| match v {
            Violation::RateLimited { dropped, .. } => *dropped,
            other => panic!("{other:?}"),
        })
        .sum();
    assert!(dropped >= 1 && dropped <= s.counters().rate_limited_lines);
    assert_eq!(s.counters().rate_limited_lines, 10_000 - accepted as u64);
    assert!(!s.is_closed(), "one second of flooding is only throttled");
    // Keep flooding: sustained abuse is disconnected within a few seconds.
    let mut closed_at = None;
    'outer: for ms in (1000..20_000).step_by(10) {
        let mut bytes = Vec::new();
        for _ in 0..100 {
            seq += 1;
            bytes.extend(report_line(seq));
        }
        let ev = s.feed(t(base, ms), &bytes);
        if disconnected(&ev) {
            closed_at = Some(ms);
            break 'outer;
        }
    }
    let closed_at = closed_at.expect("sustained flooding must disconnect");
    assert!(closed_at <= 7000, "closed at {closed_at} ms");
    assert!(s.is_closed());
}

#[test]
fn a_well_behaved_agent_never_trips_anything() {
    let base = Instant::now();
    let mut s = IngestSession::default();
    let mut events = Vec::new();
    for seq in 1..=600u64 {
        let now = t(base, seq * 100);
        if seq % 10 == 1 {
            events.extend(s.feed(now, &hello_line()));
        }
        // Split each line in two writes, as virtio-serial may deliver it.
        let line = report_line(seq);
        let (a, b) = line.split_at(line.len() / 2);
        events.extend(s.feed(now, a));
        events.extend(s.feed(now + Duration::from_millis(3), b));
    }
    assert!(violations(&events).is_empty(), "{:?}", violations(&events));
    assert_eq!(reports(&events), 600);
}

#[test]
fn seq_must_increase_and_a_new_hello_restarts_it() {
    let base = Instant::now();
    let mut s = IngestSession::default();
    s.feed(base, &hello_line());
    assert_eq!(reports(&s.feed(t(base, 1000), &report_line(5))), 1);
    let ev = s.feed(t(base, 2000), &report_line(5));
    assert_eq!(
        violations(&ev),
        vec![&Violation::SeqNotIncreasing { seq: 5, last: 5 }]
    );
    s.feed(t(base, 3000), &hello_line());
    assert_eq!(reports(&s.feed(t(base, 4000), &report_line(1))), 1);
    assert_eq!(s.stats().unwrap().last_report.map(|r| r.seq), Some(1));
}

#[test]
fn slowloris_partial_lines_time_out_and_are_exposed_as_a_deadline() {
    let base = Instant::now();
    let limits = Limits::default();
    let timeout = limits.partial_line_timeout;
    let mut s = IngestSession::new(limits.clone());
    s.feed(base, &hello_line());
    assert_eq!(s.next_deadline(), None);
    s.feed(t(base, 100), b"{\"type\":");
    assert_eq!(s.next_deadline(), Some(t(base, 100) + timeout));
    // More bytes of the same line do not extend the deadline.
    s.feed(t(base, 2000), b"\"rep");
    assert_eq!(s.next_deadline(), Some(t(base, 100) + timeout));
    assert!(s.tick(t(base, 4000)).is_empty());
    let ev = s.tick(t(base, 100) + timeout);
    assert_eq!(
        violations(&ev),
        vec![&Violation::PartialLineTimeout {
            bytes: 12,
            waited_ms: timeout.as_millis() as u64
        }]
    );
    assert_eq!(s.buffered_bytes(), 0);
    assert_eq!(s.next_deadline(), None, "idle after a timeout is no abuse");
    // The rest of that line is discarded; the next line is read normally.
    let mut rest = b"ort\"}\n".to_vec();
    rest.extend(report_line(1));
    let ev = s.feed(t(base, 6000), &rest);
    assert!(violations(&ev).is_empty());
    assert_eq!(reports(&ev), 1);
    // A guest that keeps trickling bytes with no newline is eventually dropped.
    let mut events = Vec::new();
    let mut ms = 7000;
    while !s.is_closed() && ms < 120_000 {
        events.extend(s.feed(t(base, ms), b"x"));
        if let Some(d) = s.next_deadline() {
            if d <= t(base, ms + 500) {
                events.extend(s.tick(d));
            }
        }
        assert!(s.buffered_bytes() < 100);
        ms += 500;
    }
    assert!(disconnected(&events), "trickling must end in a disconnect");
    let max_ms = 7000
        + (Limits::default().max_consecutive_violations as u64 + 1) * timeout.as_millis() as u64;
    assert!(ms <= max_ms, "took {ms} ms");
}

#[test]
fn a_clock_going_backwards_is_harmless() {
    let base = Instant::now() + Duration::from_secs(100);
    let mut s = IngestSession::default();
    s.feed(base, &hello_line());
    let back = base - Duration::from_secs(50);
    assert_eq!(reports(&s.feed(back, &report_line(1))), 1);
    assert!(s.tick(back).is_empty());
}

#[test]
fn the_newline_search_agrees_with_a_plain_scan_at_every_offset() {
    for len in 0..40usize {
        for at in 0..=len {
            let mut bytes = vec![b'x'; len];
            // Bytes that differ from '\n' in one bit, or have the high bit, must
            // not be taken for it.
            for (i, b) in bytes.iter_mut().enumerate() {
                *b = [b'x', 0x0b, 0x8a, 0x00, 0xff][i % 5];
            }
            if at < len {
                bytes[at] = b'\n';
                if at + 3 < len {
                    bytes[at + 3] = b'\n';
                }
            }
            let expected = bytes.iter().position(|&b| b == b'\n');
            assert_eq!(find_newline(&bytes), expected, "len {len}, at {at}");
        }
    }
}

fn hello_v2_line() -> Vec<u8> {
    let text = String::from_utf8(hello_line()).unwrap();
    let v2 = text.replacen("\"protocol\":null,", "", 1);
    let v2 = v2.replacen("{", "{\"protocol\":2,", 1);
    v2.into_bytes()
}

#[test]
fn protocol_2_messages_are_events_only_after_a_protocol_2_hello() {
    let base = Instant::now();
    let ack = b"{\"type\":\"ack\",\"generation\":3,\"reached\":{\"frozen\":true,\"held\":false,\"processes\":1,\"in_flight\":0,\"memory_limit\":null,\"priority\":2}}\n";
    let busy = b"{\"type\":\"busy\",\"busy\":true}\n";

    // A v1 agent's (or a hello-less) protocol-2 line is a violation, not an event.
    let mut v1 = IngestSession::default();
    let ev = v1.feed(t(base, 0), busy);
    assert!(matches!(
        violations(&ev)[..],
        [Violation::NotNegotiated { kind: "busy" }]
    ));
    v1.feed(t(base, 1), &hello_line());
    let ev = v1.feed(t(base, 2), ack);
    assert!(matches!(
        violations(&ev)[..],
        [Violation::NotNegotiated { kind: "ack" }]
    ));

    let mut v2 = IngestSession::default();
    let hello = hello_v2_line();
    let ev = v2.feed(t(base, 0), &hello);
    assert!(
        matches!(&ev[..], [Event::Hello(h)] if h.protocol() == 2),
        "{ev:?} from {}",
        String::from_utf8_lossy(&hello)
    );
    let ev = v2.feed(t(base, 1), ack);
    match &ev[..] {
        [Event::Guest(crate::v2::GuestMessage::Ack(a))] => {
            assert!(a.freeze_complete());
            assert_eq!(a.generation, 3);
        }
        other => panic!("expected one ack, got {other:?}"),
    }
    let ev = v2.feed(t(base, 2), busy);
    assert!(matches!(
        &ev[..],
        [Event::Guest(crate::v2::GuestMessage::Busy(b))] if b.busy
    ));
    // An invalid protocol-2 line is a violation naming the field.
    let bad = b"{\"type\":\"ack\",\"generation\":0,\"reached\":{\"frozen\":true,\"held\":false,\"processes\":1,\"in_flight\":0,\"memory_limit\":null,\"priority\":2}}\n";
    let ev = v2.feed(t(base, 3), bad);
    assert!(
        matches!(violations(&ev)[..], [Violation::OutOfRange { .. }]),
        "{ev:?}"
    );
    assert_eq!(v2.counters().v2_messages, 2);
}

#[test]
fn protocol_2_lines_have_a_budget_of_their_own_that_v1_lines_cannot_use_up() {
    let base = Instant::now();
    let mut s = IngestSession::default();
    s.feed(t(base, 0), &hello_v2_line());
    // 100 reports at once use up the v1 budget (burst 40)...
    let mut reports = Vec::new();
    for seq in 1..=100 {
        reports.extend(report_line(seq));
    }
    s.feed(t(base, 1), &reports);
    assert!(
        s.counters().rate_limited_lines > 0,
        "the v1 burst was exceeded"
    );
    // ...and 100 busy lines and an ack in the same instant are all taken.
    let mut v2 = Vec::new();
    for i in 0..100 {
        v2.extend(format!("{{\"type\":\"busy\",\"busy\":{}}}\n", i % 2 == 0).into_bytes());
    }
    v2.extend(b"{\"type\":\"ack\",\"generation\":9,\"reached\":{\"frozen\":true,\"held\":false,\"processes\":1,\"in_flight\":0,\"memory_limit\":null,\"priority\":2}}\n");
    let dropped_before = s.counters().rate_limited_lines;
    let ev = s.feed(t(base, 2), &v2);
    let guest = ev.iter().filter(|e| matches!(e, Event::Guest(_))).count();
    assert_eq!(guest, 101, "every protocol-2 line is an event");
    assert_eq!(s.counters().rate_limited_lines, dropped_before);
    // The v2 bucket has its own bound: a flood is cut too.
    let mut flood = Vec::new();
    for _ in 0..1000 {
        flood.extend(b"{\"type\":\"busy\",\"busy\":true}\n");
    }
    s.feed(t(base, 3), &flood);
    assert!(
        s.counters().rate_limited_lines > dropped_before,
        "a busy flood is rate-limited"
    );
    assert!(looks_v2(b"{\"type\":\"counters\",\"processes\":[]}"));
    assert!(!looks_v2(b"{\"type\":\"acknowledge\"}"));
    assert!(!looks_v2(b"{\"type\":\"report\",\"v\":1}"));
}
