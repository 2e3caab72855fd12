//! Property tests of [`IngestSession`], the host's I/O-free state machine that takes whatever
//! bytes a guest's agent writes to its channel.
//!
//! What they prove, for arbitrary byte streams cut into arbitrary chunks (garbage, over-long
//! lines, many lines, valid hellos and reports, and valid messages with a field replaced by
//! random JSON), under random [`Limits`] and a caller's clock that moves on at random:
//!
//! * feeding never panics;
//! * memory stays bounded: after every call the partial-line buffer holds at most
//!   `max_line` bytes and its capacity is at most `max_line + 1`; a closed session holds no
//!   buffer at all;
//! * every violation and disconnect is a clear error: a non-empty message under 1 KiB;
//! * there is at most one [`Event::Disconnect`], after which the session is closed and says
//!   nothing more;
//! * framing does not matter: lines within the limit fed in any chunks give the same events
//!   as fed at once;
//! * 10 MB of garbage fed in chunks, with the clock moving on, ends in a disconnect well
//!   before its end, with the buffer bounded throughout (the session never grows with what
//!   it is fed).

use std::time::{Duration, Instant};

use gvm_agent_proto::{
    CollectorKind, Event, GpuInfo, GpuSample, Hello, IngestSession, Limits, Message, ProcessSample,
    Report, MAX_LINE_BYTES,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{json, Value};

/// Every violation or disconnect message is shorter than this.
const MAX_MESSAGE: usize = 1024;

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
    h.to_line().map(String::into_bytes).unwrap_or_default()
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
    r.to_line().map(String::into_bytes).unwrap_or_default()
}

/// What a session promises after every call, and its events.
#[derive(Default)]
struct Watch {
    disconnects: usize,
}

impl Watch {
    fn check(&mut self, s: &IngestSession, events: &[Event]) -> Result<(), TestCaseError> {
        let max_line = s.limits().max_line;
        prop_assert!(
            s.buffered_bytes() <= max_line,
            "{} buffered",
            s.buffered_bytes()
        );
        prop_assert!(
            s.buffer_capacity() <= max_line + 1,
            "capacity {} for max_line {max_line}",
            s.buffer_capacity()
        );
        if self.disconnects > 0 {
            prop_assert!(events.is_empty(), "events after the disconnect: {events:?}");
        }
        for e in events {
            let text = match e {
                Event::Violation { violation, .. } => violation.to_string(),
                Event::Disconnect { reason, .. } => {
                    self.disconnects += 1;
                    reason.to_string()
                }
                Event::Hello(_) | Event::Report(_) | Event::Guest(_) => continue,
            };
            prop_assert!(!text.trim().is_empty());
            prop_assert!(
                text.len() < MAX_MESSAGE,
                "{}-byte message: {text:.300}",
                text.len()
            );
        }
        prop_assert!(self.disconnects <= 1, "{} disconnects", self.disconnects);
        if self.disconnects == 1 {
            prop_assert!(s.is_closed());
            prop_assert_eq!(s.buffer_capacity(), 0, "a closed session keeps its buffer");
        }
        Ok(())
    }
}

fn limits() -> impl Strategy<Value = Limits> {
    prop_oneof![
        Just(Limits::default()),
        (
            1usize..4096,
            0u32..100,
            0u32..100,
            0u64..10_000,
            0usize..20,
            0usize..30,
        )
            .prop_map(|(max_line, lps, burst, ms, max_v, max_c)| Limits {
                max_line,
                lines_per_second: lps,
                burst,
                v2_lines_per_second: lps,
                v2_burst: burst,
                partial_line_timeout: Duration::from_millis(ms),
                violation_window: Duration::from_millis(ms * 2),
                max_violations: max_v,
                max_consecutive_violations: max_c,
                rate_violation_interval: Duration::from_millis(ms / 4),
                reconnect_after: Duration::from_secs(30),
            }),
    ]
}

/// Random JSON, small, for field values.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "\\PC{0,24}".prop_map(Value::String),
        "[\\x00-\\x1f]{1,4}".prop_map(Value::String),
        (1usize..6000).prop_map(|n| Value::String("x".repeat(n))),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_]{1,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid hello or report line with one member (top level or inside the first GPU or
/// process) replaced by random JSON, or removed, or an unknown one added.
fn mutated_line() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),
        any::<u64>(),
        prop::sample::select(
            &[
                "v",
                "type",
                "seq",
                "ts_ms",
                "gpus",
                "processes",
                "agent",
                "os",
                "collector",
                "gpus.0.index",
                "gpus.0.name",
                "processes.0.pid",
                "processes.0.cmdline",
                "processes.0.gpu",
                "extra",
            ][..],
        ),
        proptest::option::of(any_json()),
    )
        .prop_map(|(hello, seq, at, value)| {
            let line = if hello {
                hello_line()
            } else {
                report_line(seq)
            };
            let mut v: Value = serde_json::from_slice(&line).unwrap_or(Value::Null);
            let (parent, key) = match at.split_once('.') {
                Some((list, rest)) => {
                    let (i, key) = rest.split_once('.').unwrap_or((rest, ""));
                    let i: usize = i.parse().unwrap_or(0);
                    (v.get_mut(list).and_then(|l| l.get_mut(i)), key)
                }
                None => (Some(&mut v), at),
            };
            if let Some(Value::Object(o)) = parent {
                match value {
                    Some(x) => {
                        o.insert(key.to_string(), x);
                    }
                    None => {
                        o.remove(key);
                    }
                }
            }
            v.to_string().into_bytes()
        })
}

/// One piece of a stream.
fn piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => proptest::collection::vec(any::<u8>(), 0..200),
        2 => Just(hello_line()),
        2 => any::<u64>().prop_map(report_line),
        3 => mutated_line(),
        1 => Just(b"\n".to_vec()),
        1 => Just(b"\r\n".to_vec()),
        1 => (1usize..(3 * MAX_LINE_BYTES), any::<u8>()).prop_map(|(n, b)| vec![b; n]),
    ]
}

/// A stream: pieces, each followed by a newline or not.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec((piece(), any::<bool>()), 0..24).prop_map(|pieces| {
        let mut out = Vec::new();
        for (p, newline) in pieces {
            out.extend_from_slice(&p);
            if newline {
                out.push(b'\n');
            }
        }
        out
    })
}

/// Cut `bytes` at the given sizes (cycled), the last chunk taking what is left.
fn chunks<'b>(bytes: &'b [u8], sizes: &[usize]) -> Vec<&'b [u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes
            .get(i % sizes.len().max(1))
            .copied()
            .unwrap_or(rest.len());
        let n = n.clamp(1, rest.len());
        out.push(&rest[..n]);
        rest = &rest[n..];
        i += 1;
    }
    out
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Integration tests have no lib.rs beside them to keep regressions next to.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(128))]

    /// Any stream, any chunks, any limits, a clock moving on at random (ticks included):
    /// bounded buffer, clear errors, at most one disconnect and silence after it.
    #[test]
    fn any_stream_keeps_memory_bounded_and_errors_clear(
        limits in limits(),
        bytes in stream(),
        sizes in proptest::collection::vec(1usize..70_000, 1..8),
        steps in proptest::collection::vec(0u64..3000, 1..8),
    ) {
        let mut s = IngestSession::new(limits);
        let mut w = Watch::default();
        let mut now = Instant::now();
        for (i, chunk) in chunks(&bytes, &sizes).into_iter().enumerate() {
            now += Duration::from_millis(steps[i % steps.len()]);
            if let Some(deadline) = s.next_deadline() {
                if deadline <= now {
                    let events = s.tick(now);
                    w.check(&s, &events)?;
                }
            }
            let events = s.feed(now, chunk);
            w.check(&s, &events)?;
        }
        let events = s.tick(now + Duration::from_secs(3600));
        w.check(&s, &events)?;
        // Every byte fed before the disconnect is counted.
        if w.disconnects == 0 {
            prop_assert_eq!(s.counters().bytes, bytes.len() as u64);
        }
    }

    /// With a frozen clock and lines within the limit, how the bytes are cut into chunks
    /// does not change the events.
    #[test]
    fn framing_does_not_change_the_events(
        lines in proptest::collection::vec(
            prop_oneof![
                2 => proptest::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n'), 0..120),
                1 => Just(hello_line()),
                2 => (0u64..50).prop_map(report_line),
                2 => mutated_line().prop_filter("within the limit", |l| l.len() <= MAX_LINE_BYTES),
            ],
            0..40,
        ),
        sizes in proptest::collection::vec(1usize..300, 1..6),
    ) {
        let mut bytes = Vec::new();
        for l in &lines {
            bytes.extend_from_slice(l);
            bytes.push(b'\n');
        }
        let now = Instant::now();
        let mut whole = IngestSession::default();
        let expected = whole.feed(now, &bytes);
        let mut cut = IngestSession::default();
        let mut w = Watch::default();
        let mut got = Vec::new();
        for chunk in chunks(&bytes, &sizes) {
            let events = cut.feed(now, chunk);
            w.check(&cut, &events)?;
            got.extend(events);
        }
        prop_assert_eq!(got, expected);
        // Bytes after a disconnect are not counted, and the cut stream has some.
        let (mut a, mut b) = (cut.counters(), whole.counters());
        if whole.is_closed() {
            (a.bytes, b.bytes) = (0, 0);
        }
        prop_assert_eq!(a, b);
    }

    /// Every mutated hello or report, after a valid hello: accepted, or one clear violation.
    #[test]
    fn mutated_messages_are_accepted_or_clearly_refused(lines in proptest::collection::vec(mutated_line(), 1..20)) {
        let mut s = IngestSession::new(Limits {
            max_violations: usize::MAX,
            max_consecutive_violations: usize::MAX,
            ..Limits::default()
        });
        let mut w = Watch::default();
        let now = Instant::now();
        let mut first = hello_line();
        first.push(b'\n');
        let events = s.feed(now, &first);
        prop_assert!(matches!(events.as_slice(), [Event::Hello(_)]), "{events:?}");
        for (i, mut line) in lines.into_iter().enumerate() {
            line.push(b'\n');
            // One line a second: the rate limit stays out of it.
            let events = s.feed(now + Duration::from_secs(i as u64 + 1), &line);
            w.check(&s, &events)?;
            prop_assert!(events.len() <= 1, "{events:?}");
        }
    }
}

proptest! {
    #![proptest_config(config(12))]

    /// 10 MB of garbage in random chunks, the clock moving on up to 2 s a chunk: lines of
    /// junk (of 1 byte to 3x the limit) or no newline at all. The session disconnects long
    /// before the end, and its buffer stays bounded throughout.
    #[test]
    fn ten_megabytes_of_garbage_end_in_a_disconnect(
        pattern in proptest::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n'), 0..64),
        line_len in prop_oneof![Just(None), (1usize..(3 * MAX_LINE_BYTES)).prop_map(Some)],
        sizes in proptest::collection::vec(1024usize..65_536, 1..8),
        steps in proptest::collection::vec(0u64..2000, 1..8),
    ) {
        const TOTAL: usize = 10 * 1024 * 1024;
        const CHUNK: usize = 65_536;
        // Every line starts with '#': none is JSON, none is blank.
        let mut period: Vec<u8> = std::iter::once(b'#')
            .chain(pattern.iter().copied().cycle())
            .take(line_len.unwrap_or(CHUNK))
            .collect();
        if line_len.is_some() {
            period.push(b'\n');
        }
        // The stream is `period` repeated; chunk at offset p is big[p % len..][..n].
        let big: Vec<u8> = period.iter().copied().cycle().take(CHUNK + period.len()).collect();
        let mut s = IngestSession::default();
        let mut w = Watch::default();
        let mut now = Instant::now();
        let (mut fed, mut closed_at) = (0usize, None);
        let mut i = 0;
        while fed < TOTAL {
            let n = sizes[i % sizes.len()].min(TOTAL - fed);
            let at = fed % period.len();
            now += Duration::from_millis(steps[i % steps.len()]);
            let events = s.feed(now, &big[at..at + n]);
            w.check(&s, &events)?;
            fed += n;
            i += 1;
            if s.is_closed() && closed_at.is_none() {
                closed_at = Some(fed);
            }
        }
        let closed_at =
            closed_at.ok_or_else(|| TestCaseError::fail("10 MB of garbage and still open"))?;
        prop_assert!(closed_at < TOTAL / 4, "closed only after {closed_at} bytes");
        prop_assert_eq!(w.disconnects, 1);
        prop_assert_eq!(s.counters().bytes, closed_at as u64);
    }
}
