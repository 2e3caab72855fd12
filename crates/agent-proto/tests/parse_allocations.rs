//! How many heap allocations decoding one report costs: the host decodes about a
//! thousand 50-process reports a second (100 guests at 10 Hz), so the decoder
//! must not copy the line into an intermediate tree first. This test binary
//! counts allocations with its own global allocator (the count is per thread, so
//! the test harness's other threads do not disturb it).

#![allow(clippy::unwrap_used, missing_docs)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Instant;

use gvm_agent_proto::{parse_line, IngestSession, Message};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; the only
// addition is a thread-local counter, which does not allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let before = ALLOCATIONS.with(Cell::get);
    let out = f();
    (out, ALLOCATIONS.with(Cell::get) - before)
}

const HELLO: &str = r#"{"type":"hello","v":1,"agent":"0.1.0","os":"Bench","kernel":"6.1","collector":"nvml","driver":"580.65","gpus":[{"index":0,"name":"NVIDIA H100 80GB HBM3","memory_total_bytes":85520809984}]}"#;

/// An NVML-style report like the benchmark's (~6.5 KB for 50 processes).
fn report_line(seq: u64, processes: u32) -> String {
    let procs: Vec<String> = (0..processes)
        .map(|i| {
            format!(
                r#"{{"pid":{},"name":"python3","cmdline":"python3 train.py --rank {i}","gpu":0,"memory_bytes":{},"sm_pct":{},"mem_pct":{}}}"#,
                1000 + i,
                (u64::from(i) + 1) << 24,
                i % 101,
                (i * 7) % 101
            )
        })
        .collect();
    format!(
        r#"{{"type":"report","v":1,"seq":{seq},"ts_ms":{seq},"gpus":[{{"index":0,"util_sm_pct":80,"util_mem_pct":40,"memory_used_bytes":4294967296}}],"processes":[{}]}}"#,
        procs.join(",")
    )
}

#[test]
fn a_50_process_report_decodes_with_about_two_allocations_per_process() {
    let processes = 50u32;
    let line = report_line(1, processes);
    let (parsed, n) = allocations(|| parse_line(line.as_bytes()));
    let Ok(Message::Report(r)) = parsed else {
        panic!("{parsed:?}");
    };
    assert_eq!(r.processes.len(), processes as usize);
    // Two strings per process (name, cmdline), the growth of the two lists, and
    // nothing else: a decoder that buffers the object first needs several times this.
    let bound = 2 * u64::from(processes) + 16;
    println!("parse_line: {n} allocations for {processes} processes (bound {bound})");
    assert!(n <= bound, "{n} allocations, over {bound}");
    // The bound does tell buffering apart: a generic tree of the same line (what
    // serde's internally tagged enums build first) costs more than it allows.
    let (tree, buffered) = allocations(|| serde_json::from_str::<serde_json::Value>(&line));
    assert!(tree.is_ok());
    println!("a generic JSON tree of the same line: {buffered} allocations");
    assert!(buffered > bound, "{buffered}");
}

#[test]
fn an_accepted_report_costs_the_session_no_second_copy() {
    let processes = 50u32;
    let mut session = IngestSession::default();
    let now = Instant::now();
    let mut bytes = HELLO.as_bytes().to_vec();
    bytes.push(b'\n');
    assert_eq!(session.feed(now, &bytes).len(), 1);
    let mut line = report_line(1, processes).into_bytes();
    line.push(b'\n');
    let (events, n) = allocations(|| session.feed(now, &line));
    assert_eq!(events.len(), 1, "{events:?}");
    let bound = 2 * u64::from(processes) + 24;
    println!("feed: {n} allocations for a {processes}-process report (bound {bound})");
    assert!(n <= bound, "{n} allocations, over {bound}");
}

#[test]
fn decoding_speed_is_printed() {
    let line = report_line(1, 50);
    let rounds = 2000u32;
    let t = Instant::now();
    for _ in 0..rounds {
        assert!(parse_line(line.as_bytes()).is_ok());
    }
    let per = t.elapsed() / rounds;
    println!(
        "parse_line: {per:?} per {}-byte 50-process report (this build's profile)",
        line.len()
    );
}
