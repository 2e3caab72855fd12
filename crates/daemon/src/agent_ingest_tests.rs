//! Unit tests of the guest-agent ingest: discovery, limits, target
//! selection and metrics (pure), and one channel task against a fake QEMU socket.

use super::*;
use gvm_agent_proto::{CollectorKind, Counters, Hello, ProcessSample, Report};

fn stats(processes: Vec<ProcessSample>) -> GuestStats {
    GuestStats {
        hello: Hello {
            v: 1,
            agent: "0.1.0".into(),
            os: "Debian".into(),
            kernel: "6.1".into(),
            driver: None,
            protocol: None,
            collector: CollectorKind::Nvml,
            gpus: vec![],
        },
        last_report: Some(Report {
            v: 1,
            seq: 3,
            ts_ms: 0,
            gpus: vec![],
            processes,
            processes_omitted: 0,
        }),
        counters: Counters {
            reports: 3,
            ..Counters::default()
        },
    }
}

fn proc_sample(pid: u32, name: &str, memory: Option<u64>) -> ProcessSample {
    ProcessSample {
        pid,
        name: name.into(),
        cmdline: String::new(),
        gpu: Some(0),
        memory_bytes: memory,
        sm_pct: None,
        mem_pct: None,
    }
}

fn info(uuid: Option<Uuid>, domain: Option<&str>, s: Option<GuestStats>) -> GuestAgentInfo {
    GuestAgentInfo {
        socket: PathBuf::from("/run/x.sock"),
        uuid,
        domain: domain.map(str::to_string),
        connected: true,
        connections: 1,
        disconnects: 0,
        violations: 2,
        last_problem: None,
        report_age_ms: Some(1500),
        stats: s,
        enforcement: None,
    }
}

#[test]
fn agent_dir_sockets_are_attributed_by_uuid_name_and_libvirt_by_domain() {
    let u = Uuid::from_u128(7);
    let dir = [
        PathBuf::from(format!("/a/{u}.sock")),
        PathBuf::from("/a/not-a-uuid.sock"),
        PathBuf::from(format!("/a/{u}.txt")),
    ];
    let doms = [
        ("vm1".to_string(), vec![PathBuf::from("/lv/vm1/agent")]),
        // A libvirt path that is also a uuid socket keeps the first attribution.
        (
            "vm2".to_string(),
            vec![PathBuf::from(format!("/a/{u}.sock"))],
        ),
    ];
    let want = desired_channels(&dir, &doms);
    assert_eq!(want.len(), 2, "{want:?}");
    assert_eq!(
        want.get(Path::new(&format!("/a/{u}.sock"))),
        Some(&Attribution::Vgpu(u))
    );
    assert_eq!(
        want.get(Path::new("/lv/vm1/agent")),
        Some(&Attribution::Domain("vm1".into()))
    );
}

#[test]
fn a_listing_that_fails_is_an_error_not_an_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    let config = |agent_dir: PathBuf| AgentConfig {
        agent_dir,
        host: HostRoot::new(dir.path()),
        limits: Limits::default(),
    };
    // Nothing there yet: no channels.
    let (want, seen) = discover(&config(dir.path().join("missing"))).unwrap();
    assert!(want.is_empty() && seen == 0);
    // Unreadable (here: not a directory; at the fd limit: EMFILE): the channels
    // followed must not be taken for gone.
    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    assert!(discover(&config(file)).is_err());
}

#[test]
fn channels_are_capped() {
    let dir: Vec<PathBuf> = (0..MAX_CHANNELS as u128 + 10)
        .map(|i| PathBuf::from(format!("/a/{}.sock", Uuid::from_u128(i + 1))))
        .collect();
    assert_eq!(desired_channels(&dir, &[]).len(), MAX_CHANNELS);
}

#[test]
fn limits_parse_over_the_defaults_and_refuse_unknown_keys() {
    let l = parse_limits("partial_line_timeout_ms=300, max_consecutive_violations=3").unwrap();
    assert_eq!(l.partial_line_timeout, Duration::from_millis(300));
    assert_eq!(l.max_consecutive_violations, 3);
    assert_eq!(l.burst, Limits::default().burst);
    assert_eq!(parse_limits("").unwrap(), Limits::default());
    let e = parse_limits("burst=1,bogus=2").unwrap_err();
    assert!(e.to_string().contains("'bogus=2'"), "{e}");
    assert!(parse_limits("burst=x").is_err());
    assert!(parse_limits("burst").is_err());
    assert!(parse_limits("burst=99999999999").is_err());
}

#[test]
fn select_by_uuid_domain_or_all() {
    let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
    let all = vec![
        info(Some(a), Some("vm1"), None),
        info(Some(b), None, None),
        info(None, Some("vm1"), None),
    ];
    assert_eq!(select(all.clone(), None).unwrap().len(), 3);
    assert_eq!(select(all.clone(), Some("vm1")).unwrap().len(), 2);
    let one = select(all.clone(), Some(&b.to_string())).unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].uuid, Some(b));
    let e = select(all, Some("vm9")).unwrap_err();
    assert_eq!(e.code, gvm_proto::ErrorCode::NotFound);
    assert!(e.message.contains("'vm9'"), "{}", e.message);
}

#[test]
fn metrics_label_processes_by_domain_uuid_pid_and_name() {
    let u = Uuid::from_u128(9);
    let s = stats(vec![
        proc_sample(42, "py\"thon", Some(1 << 30)),
        proc_sample(43, "sleep", None),
    ]);
    let text = crate::metrics::render_guests(&[
        info(Some(u), Some("vm1"), Some(s)),
        info(None, None, None),
    ]);
    let l = format!("domain=\"vm1\",uuid=\"{u}\"");
    assert!(
        text.contains(&format!(
            "gvm_vgpu_guest_process_memory_bytes{{{l},pid=\"42\",name=\"py\\\"thon\"}} {}",
            1u64 << 30
        )),
        "{text}"
    );
    assert!(
        !text.contains("gvm_vgpu_guest_process_memory_bytes{domain=\"vm1\",uuid=\"00000000-0000-0000-0000-000000000009\",pid=\"43\""),
        "unknown memory is not exported as a number"
    );
    assert!(text.contains(&format!(
        "gvm_vgpu_guest_process_info{{{l},pid=\"43\",name=\"sleep\"}} 1"
    )));
    assert!(text.contains(&format!("gvm_vgpu_guest_processes{{{l}}} 2")));
    assert!(text.contains(&format!("gvm_vgpu_guest_reports_total{{{l}}} 3")));
    assert!(text.contains(&format!("gvm_vgpu_guest_report_age_seconds{{{l}}} 1")));
    assert!(text.contains("gvm_vgpu_guest_violations_total{domain=\"\",uuid=\"\"} 2"));
    assert_eq!(
        text.matches("gvm_vgpu_guest_processes{").count(),
        1,
        "a channel without a report has no process count"
    );
    assert!(text.contains("# TYPE gvm_vgpu_guest_violations_total counter"));
}

/// A fake QEMU: listen on a socket, let the channel task connect, send lines.
#[tokio::test]
async fn a_channel_task_ingests_reports_and_cuts_off_garbage() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let u = Uuid::from_u128(5);
    let sock = dir.path().join(format!("{u}.sock"));
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let table = GuestTable::default();
    let limits = Limits {
        reconnect_after: Duration::from_millis(50),
        ..Limits::default()
    };
    let mut tasks = BTreeMap::new();
    let config = AgentConfig {
        agent_dir: dir.path().to_path_buf(),
        host: HostRoot::new(dir.path()),
        limits,
    };
    let want = desired_channels(&list_agent_dir(dir.path()).unwrap(), &[]);
    reconcile_tasks(&table, &config, &mut tasks, want);
    assert_eq!(table.len(), 1);

    let (mut s, _) = listener.accept().await.unwrap();
    let hello = br#"{"type":"hello","v":1,"agent":"0.1.0","os":"T","kernel":"6.1","collector":"proc","gpus":[]}"#;
    s.write_all(hello).await.unwrap();
    s.write_all(b"\n{\"type\":\"report\",\"v\":1,\"seq\":1,\"ts_ms\":0,\"gpus\":[],\"processes\":[{\"pid\":7,\"name\":\"cuda\",\"cmdline\":\"\"}]}\n").await.unwrap();
    let seen = wait_for(&table, |i| i.stats.is_some()).await;
    let st = seen.stats.unwrap();
    assert_eq!(st.last_report.unwrap().processes[0].pid, 7);
    assert!(seen.connected);
    assert_eq!(seen.uuid, Some(u));

    // Garbage until the session cuts the guest off.
    for _ in 0..12 {
        s.write_all(b"{not json\n").await.unwrap();
    }
    let cut = wait_for(&table, |i| i.disconnects == 1).await;
    assert!(cut.violations >= 6, "{cut:?}");
    assert!(cut.last_problem.unwrap().contains("disconnecting"));
    // The stats from before stay; the task reconnects after the pause.
    assert!(cut.stats.is_some());
    let (_s2, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
        .await
        .unwrap()
        .unwrap();
    let again = wait_for(&table, |i| i.connections == 2 && i.connected).await;
    assert_eq!(again.disconnects, 1);

    // The socket going away stops the task and drops the entry.
    reconcile_tasks(&table, &config, &mut tasks, BTreeMap::new());
    assert!(table.is_empty());
    assert!(tasks.is_empty());
}

async fn wait_for(table: &GuestTable, f: impl Fn(&GuestAgentInfo) -> bool) -> GuestAgentInfo {
    for _ in 0..500 {
        if let Some(i) = table.snapshot().into_iter().find(&f) {
            return i;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached: {:?}", table.snapshot());
}

#[test]
fn metrics_carry_the_guests_cuda_processes_and_its_protocol_2_state() {
    let u = Uuid::from_u128(7);
    let mut i = info(Some(u), Some("vm2"), None);
    i.enforcement = Some(gvm_proto::GuestEnforcement {
        protocol: 2,
        connected: true,
        generation_sent: Some(5),
        generation_acked: Some(5),
        frozen_reached: Some(false),
        in_flight: Some(0),
        busy: Some(true),
        forged_acks: 2,
        held: true,
        hold_cap_hits: 1,
        processes: vec![gvm_proto::GuestProcess {
            pid: 41,
            name: "tr\"ain".into(),
            memory_current: 4096,
            memory_swap: 0,
            kernels_submitted: 10,
            kernels_ended: 9,
            pending: 1,
            busy: true,
            gpu_busy_us: 0,
        }],
        processes_age_ms: Some(10),
    });
    let text = crate::metrics::render_guests(&[i]);
    let l = format!("domain=\"vm2\",uuid=\"{u}\"");
    for line in [
        format!("gvm_vgpu_guest_held{{{l}}} 1"),
        format!("gvm_vgpu_guest_state_acknowledged{{{l}}} 1"),
        format!("gvm_vgpu_guest_forged_acks_total{{{l}}} 2"),
        format!("gvm_vgpu_guest_hold_cap_hits_total{{{l}}} 1"),
        format!("gvm_vgpu_guest_cuda_memory_bytes{{{l},pid=\"41\",name=\"tr\\\"ain\"}} 4096"),
        format!(
            "gvm_vgpu_guest_cuda_kernels_submitted_total{{{l},pid=\"41\",name=\"tr\\\"ain\"}} 10"
        ),
        format!("gvm_vgpu_guest_cuda_busy{{{l},pid=\"41\",name=\"tr\\\"ain\"}} 1"),
    ] {
        assert!(text.contains(&line), "{line} missing from:\n{text}");
    }
}

#[test]
fn outranked_goes_only_to_agents_that_said_protocol_3() {
    let mut c = GuestControl::new();
    c.desired = Some(DesiredState {
        knobs: v2::Knobs::default(),
        hold: false,
        outranked: true,
        outranks: true,
    });
    c.protocol = 2;
    let s = c.due().expect("due");
    assert!(
        !s.outranked && !s.outranks,
        "a protocol-2 agent refuses unknown fields"
    );
    let line = v2::HostMessage::Snapshot(s).to_line();
    assert!(!line.contains("outranked"), "{line}");
    c.protocol = 3;
    let s = c.due().expect("due");
    assert!(s.outranked && s.outranks);
    assert_eq!(
        v2::parse_host_line(v2::HostMessage::Snapshot(s).to_line().as_bytes()),
        Ok(s)
    );
}
