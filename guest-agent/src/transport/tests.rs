//! The line writer against a real socketpair: absent, slow and vanishing peers.

use super::*;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;

fn pair() -> (LineWriter, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    let file = File::from(OwnedFd::from(a));
    (LineWriter::new(file).unwrap(), b)
}

fn line(tag: char, len: usize) -> Vec<u8> {
    let mut l = vec![tag as u8; len - 1];
    l.push(b'\n');
    l
}

fn drain(peer: &mut UnixStream) -> Vec<u8> {
    peer.set_nonblocking(true).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match peer.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    out
}

#[test]
fn lines_reach_a_reading_peer() {
    let (mut w, mut peer) = pair();
    w.send(b"one\n", Duration::from_millis(100)).unwrap();
    w.send(b"two\n", Duration::from_millis(100)).unwrap();
    assert_eq!(drain(&mut peer), b"one\ntwo\n");
}

#[test]
fn a_peer_that_never_reads_costs_at_most_the_timeout_and_framing_survives() {
    let (mut w, mut peer) = pair();
    let timeout = Duration::from_millis(200);
    let big = line('a', 48 * 1024);
    let mut sent = 0;
    let mut first_failure = None;
    // Fill the socket buffer until a send times out.
    for i in 0..200 {
        let start = Instant::now();
        let r = w.send(&big, timeout);
        let took = start.elapsed();
        assert!(
            took < timeout + Duration::from_millis(150),
            "send {i} took {took:?}"
        );
        match r {
            Ok(()) => sent += 1,
            Err(e) => {
                first_failure = Some(e);
                break;
            }
        }
    }
    let kept = match first_failure {
        Some(SendError::Timeout { kept, .. }) => kept,
        other => panic!("expected a timeout, got {other:?}"),
    };
    assert_eq!(w.pending_bytes(), kept);
    // While the tail cannot be flushed, new lines are dropped, quickly.
    let start = Instant::now();
    assert!(matches!(
        w.send(&line('b', 100), timeout),
        Err(SendError::Timeout { .. })
    ));
    assert!(start.elapsed() < timeout + Duration::from_millis(150));
    // The host catches up: the tail goes first, then the next line, and the
    // stream holds only whole lines.
    let mut got = drain(&mut peer);
    w.send(&line('c', 100), timeout).unwrap();
    got.extend(drain(&mut peer));
    assert_eq!(w.pending_bytes(), 0);
    let lines: Vec<&[u8]> = got.split(|&b| b == b'\n').collect();
    assert_eq!(
        lines.last().map(|l| l.len()),
        Some(0),
        "ends with a newline"
    );
    let lines = &lines[..lines.len() - 1];
    let partial = usize::from(kept > 0);
    assert_eq!(lines.len(), sent + partial + 1);
    for l in &lines[..lines.len() - 1] {
        assert!(l.len() == big.len() - 1 && l.iter().all(|&b| b == b'a'));
    }
    assert!(lines[lines.len() - 1].iter().all(|&b| b == b'c'));
}

#[test]
fn a_vanished_peer_is_reported_as_broken() {
    let (mut w, peer) = pair();
    drop(peer);
    let r = w.send(b"hello\n", Duration::from_millis(100));
    assert!(matches!(&r, Err(e) if e.needs_reopen()), "{r:?}");
}

#[test]
fn a_fifo_without_reader_is_not_connected_and_never_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("port");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let start = Instant::now();
    let r = virtio::open_device(&fifo);
    assert!(start.elapsed() < Duration::from_millis(500));
    assert!(matches!(r, Err(crate::AgentError::Open { .. })), "{r:?}");
    // With a reader it opens; after the reader leaves, the write fails at once.
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let mut w = virtio::open_device(&fifo).unwrap();
    w.send(b"x\n", Duration::from_millis(100)).unwrap();
    drop(reader);
    let r = w.send(b"y\n", Duration::from_millis(100));
    assert!(matches!(&r, Err(e) if e.needs_reopen()), "{r:?}");
}
