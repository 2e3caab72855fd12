use super::*;

#[test]
fn snapshot_round_trips_and_higher_generation_wins() {
    let s = Snapshot {
        generation: 3,
        knobs: Knobs {
            priority: Some(2),
            frozen: true,
            ..Knobs::default()
        },
        hold: false,
        outranked: false,
        outranks: false,
    };
    let line = HostMessage::Snapshot(s).to_line();
    assert!(
        line.starts_with(r#"{"type":"snapshot","generation":3"#),
        "{line}"
    );
    assert!(
        !line.contains("outranked"),
        "not outranked: the line a protocol-2 agent reads: {line}"
    );
    let o = Snapshot {
        outranked: true,
        outranks: true,
        ..s
    };
    let line3 = HostMessage::Snapshot(o).to_line();
    assert!(line3.contains(r#""outranked":true"#), "{line3}");
    assert_eq!(parse_host_line(line3.as_bytes()), Ok(o));
    assert_eq!(parse_host_line(line.as_bytes()), Ok(s));
    let mut t = SnapshotTracker::default();
    assert!(t.offer(s));
    assert!(!t.offer(s));
    assert!(!t.offer(Snapshot { generation: 2, ..s }));
    assert!(t.offer(Snapshot { generation: 4, ..s }));
}

#[test]
fn bad_guest_fields_are_named() {
    let line = br#"{"type":"ack","generation":1,"reached":{"frozen":true,"held":true,"processes":1,"in_flight":0,"memory_limit":null,"priority":17}}"#;
    assert!(
        matches!(parse_guest_line(line), Err(Violation::OutOfRange { field, .. }) if field == "reached.priority")
    );
    let line = br#"{"type":"busy","busy":true,"vm":"other"}"#;
    assert!(matches!(
        parse_guest_line(line),
        Err(Violation::Malformed { .. })
    ));
    let line = br#"{"type":"snapshot","generation":1,"knobs":{"memory_limit":null,"priority":null,"frozen":false,"host_swap":false,"share_budget_us":null,"window_ms":null},"hold":false}"#;
    assert!(parse_guest_line(line).is_err(), "a guest cannot send knobs");
    assert!(is_guest_kind(br#"{"type":"busy","busy":false}"#));
    assert!(!is_guest_kind(br#"{"type":"report"}"#));
}

proptest::proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
        let _ = parse_guest_line(&bytes);
        let _ = parse_host_line(&bytes);
        let _ = is_guest_kind(&bytes);
    }
}
