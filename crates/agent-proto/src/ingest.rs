//! The host's per-connection ingest state machine: bytes in, events out.
//!
//! One [`IngestSession`] per guest channel. The daemon reads whatever the socket
//! gives and calls [`IngestSession::feed`] with the bytes and the current time;
//! it gets back [`Event`]s: accepted hellos and reports, violations to log, and
//! at most one [`Event::Disconnect`], after which it must close the socket.
//! No I/O and no clock reads happen here: time is an argument, so tests drive a
//! fake clock.
//!
//! Memory is bounded whatever the guest sends: the only buffer is the partial
//! line, at most [`Limits::max_line`] + 1 bytes; a longer line is reported once and
//! its remainder discarded as it arrives, never stored. CPU is bounded by a token
//! bucket on complete lines (checked before any parsing) and a partial-line
//! timeout that the caller arms with [`IngestSession::next_deadline`] and fires
//! with [`IngestSession::tick`]. Every violation that counts against the guest is
//! remembered for [`Limits::violation_window`]; more than
//! [`Limits::max_violations`] in that window closes the session, and so do more
//! than [`Limits::max_consecutive_violations`] in a row at any pace with no valid
//! message between them (a slow trickle of garbage).

use crate::error::{DisconnectReason, Violation};
use crate::message::{Hello, Message, Report, MAX_LINE_BYTES};
use crate::stats::{Counters, GuestStats};
use crate::validate::{check_hello, check_report, parse_line};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The knobs of an ingest session. [`Limits::default`] suits the agent's 1 s
/// interval with plenty of headroom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest line, bytes, not counting the newline.
    pub max_line: usize,
    /// Sustained lines per second.
    pub lines_per_second: u32,
    /// Lines that may arrive at once.
    pub burst: u32,
    /// Sustained protocol-2 lines (counters, busy, acks) per second, on a bucket of their
    /// own: a v2 guest sends a busy line per transition (its agent bounds them at 50 a
    /// second) and an acknowledgement per state, which the v1 budget must not starve.
    pub v2_lines_per_second: u32,
    /// Protocol-2 lines that may arrive at once.
    pub v2_burst: u32,
    /// How long a partial line may wait for its newline.
    pub partial_line_timeout: Duration,
    /// The window in which violations are counted.
    pub violation_window: Duration,
    /// Violations tolerated within the window; one more disconnects.
    pub max_violations: usize,
    /// Violations tolerated in a row, at any pace, with no valid message
    /// between them; one more disconnects (this ends slow trickles of garbage).
    pub max_consecutive_violations: usize,
    /// At most one rate-limit violation is raised per this interval while
    /// throttling (the dropped lines are counted in it).
    pub rate_violation_interval: Duration,
    /// What the caller should wait before accepting the guest again after a
    /// disconnect (carried in [`Event::Disconnect`]).
    pub reconnect_after: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line: MAX_LINE_BYTES,
            lines_per_second: 20,
            burst: 40,
            v2_lines_per_second: 200,
            v2_burst: 400,
            partial_line_timeout: Duration::from_secs(5),
            violation_window: Duration::from_secs(10),
            max_violations: 5,
            max_consecutive_violations: 10,
            rate_violation_interval: Duration::from_secs(1),
            reconnect_after: Duration::from_secs(30),
        }
    }
}

/// What one call to [`IngestSession::feed`] or [`IngestSession::tick`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A valid hello was accepted (the session's GPU list is now this one's).
    /// Shared with the session, which keeps it: no copy is made.
    Hello(Arc<Hello>),
    /// A valid report was accepted. Shared with the session, which keeps it as
    /// the latest: no copy is made (a 50-process report is ~100 strings).
    Report(Arc<Report>),
    /// The guest broke the protocol; log it (the line, if any, was dropped).
    Violation {
        /// 1-based number of the line the violation is about (the line being
        /// assembled for size and timeout violations).
        line: u64,
        /// What was wrong.
        violation: Violation,
    },
    /// A valid protocol-2 message from an agent whose hello announced protocol 2.
    Guest(crate::v2::GuestMessage),
    /// The session is over: close the connection, and do not accept this guest
    /// again for `reconnect_after`.
    Disconnect {
        /// Why.
        reason: DisconnectReason,
        /// The suggested pause before reconnecting.
        reconnect_after: Duration,
    },
}

/// A token bucket in milli-tokens, refilled from the caller's clock.
#[derive(Debug, Clone)]
struct TokenBucket {
    milli: u64,
    capacity_milli: u64,
    per_second: u64,
    last: Option<Instant>,
}

impl TokenBucket {
    fn new(per_second: u32, burst: u32) -> Self {
        let capacity_milli = u64::from(burst.max(1)) * 1000;
        TokenBucket {
            milli: capacity_milli,
            capacity_milli,
            per_second: u64::from(per_second),
            last: None,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            // A clock that goes backwards refills nothing.
            let elapsed = now.saturating_duration_since(last);
            let add = (elapsed.as_millis() as u64).saturating_mul(self.per_second);
            self.milli = self.milli.saturating_add(add).min(self.capacity_milli);
            // Keep the sub-millisecond remainder by advancing only whole ms.
            self.last = Some(last + Duration::from_millis(elapsed.as_millis() as u64));
        } else {
            self.last = Some(now);
        }
        if self.milli >= 1000 {
            self.milli -= 1000;
            true
        } else {
            false
        }
    }
}

/// Where the session is in the protocol.
#[derive(Debug, Clone)]
enum Phase {
    AwaitingHello,
    Ready {
        hello: Arc<Hello>,
        last_seq: Option<u64>,
        last_report: Option<(Arc<Report>, Instant)>,
    },
    Closed,
}

/// One guest connection's ingest state. See the module docs.
#[derive(Debug, Clone)]
pub struct IngestSession {
    limits: Limits,
    /// The partial line; never longer than `limits.max_line`.
    buf: Vec<u8>,
    /// Dropping bytes up to the next newline.
    discarding: bool,
    /// Bytes dropped in the current discard run not yet reported as a violation.
    discard_run: usize,
    /// When the current partial line (or discard run) started.
    partial_since: Option<Instant>,
    bucket: TokenBucket,
    /// The protocol-2 lines' bucket.
    v2_bucket: TokenBucket,
    /// Lines dropped by the rate limit not yet reported.
    unreported_drops: u64,
    last_rate_violation: Option<Instant>,
    /// Times of recent violations, at most `max_violations + 1` long.
    recent: VecDeque<Instant>,
    /// Counting violations since the last accepted message.
    streak: usize,
    phase: Phase,
    line_no: u64,
    counters: Counters,
    last_activity: Option<Instant>,
}

impl IngestSession {
    /// A fresh session with the given limits.
    pub fn new(limits: Limits) -> Self {
        IngestSession {
            bucket: TokenBucket::new(limits.lines_per_second, limits.burst),
            v2_bucket: TokenBucket::new(limits.v2_lines_per_second, limits.v2_burst),
            buf: Vec::new(),
            discarding: false,
            discard_run: 0,
            partial_since: None,
            unreported_drops: 0,
            last_rate_violation: None,
            recent: VecDeque::with_capacity(limits.max_violations.saturating_add(1).min(1024)),
            streak: 0,
            phase: Phase::AwaitingHello,
            line_no: 0,
            counters: Counters::default(),
            last_activity: None,
            limits,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether the session has disconnected the guest.
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// Bytes held for the partial line (never more than `max_line`).
    pub fn buffered_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Capacity of the partial-line buffer (the memory it holds).
    pub fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Session counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// When the last byte arrived, if any did.
    pub fn last_activity(&self) -> Option<Instant> {
        self.last_activity
    }

    /// When the last accepted report arrived (host clock), if any.
    pub fn last_report_at(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Ready {
                last_report: Some((_, at)),
                ..
            } => Some(*at),
            _ => None,
        }
    }

    /// A snapshot for the daemon to store, once a hello has been accepted.
    pub fn stats(&self) -> Option<GuestStats> {
        match &self.phase {
            Phase::Ready {
                hello, last_report, ..
            } => Some(GuestStats {
                hello: (**hello).clone(),
                last_report: last_report.as_ref().map(|(r, _)| (**r).clone()),
                counters: self.counters,
            }),
            _ => None,
        }
    }

    /// When [`IngestSession::tick`] must next be called: the partial-line
    /// deadline, if a partial line is pending.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.is_closed() {
            return None;
        }
        self.partial_since
            .map(|t| t + self.limits.partial_line_timeout)
    }

    /// Act on time passing: a partial line older than the timeout is discarded and
    /// reported. Call it at [`IngestSession::next_deadline`] (calling it at other
    /// times is harmless).
    pub fn tick(&mut self, now: Instant) -> Vec<Event> {
        let mut events = Vec::new();
        self.check_partial_timeout(now, &mut events);
        events
    }

    /// Take the bytes that arrived at `now`. See the module docs.
    pub fn feed(&mut self, now: Instant, bytes: &[u8]) -> Vec<Event> {
        let mut events = Vec::new();
        if self.is_closed() {
            return events;
        }
        self.counters.bytes = self.counters.bytes.saturating_add(bytes.len() as u64);
        if !bytes.is_empty() {
            self.last_activity = Some(now);
        }
        self.check_partial_timeout(now, &mut events);
        let mut rest = bytes;
        while !rest.is_empty() && !self.is_closed() {
            match find_newline(rest) {
                Some(i) => {
                    let (chunk, tail) = (&rest[..i], &rest[i + 1..]);
                    rest = tail;
                    self.partial_since = None;
                    if self.discarding {
                        self.count_discarded(chunk.len());
                        self.discarding = false;
                        self.discard_run = 0;
                        continue;
                    }
                    self.line_no += 1;
                    self.counters.lines += 1;
                    if self.buf.len() + chunk.len() > self.limits.max_line {
                        self.count_discarded(self.buf.len() + chunk.len());
                        self.buf.clear();
                        let limit = self.limits.max_line;
                        self.violation(now, Violation::LineTooLong { limit }, &mut events);
                    } else if self.buf.is_empty() {
                        self.line(now, chunk, &mut events);
                    } else {
                        let mut line = std::mem::take(&mut self.buf);
                        line.extend_from_slice(chunk);
                        self.line(now, &line, &mut events);
                        // Reuse the buffer, unless that line closed the session: a
                        // closed session holds none.
                        if !self.is_closed() {
                            line.clear();
                            self.buf = line;
                        }
                    }
                }
                None => {
                    if self.partial_since.is_none() {
                        self.partial_since = Some(now);
                    }
                    if self.discarding {
                        self.count_discarded(rest.len());
                        self.discard_run += rest.len();
                        while self.discard_run > self.limits.max_line && !self.is_closed() {
                            // Every further max_line bytes without a newline is
                            // another over-long line.
                            self.discard_run -= self.limits.max_line;
                            let limit = self.limits.max_line;
                            self.violation(now, Violation::LineTooLong { limit }, &mut events);
                        }
                    } else if self.buf.len() + rest.len() > self.limits.max_line {
                        self.line_no += 1;
                        self.counters.lines += 1;
                        self.count_discarded(self.buf.len() + rest.len());
                        self.discard_run = self.buf.len() + rest.len() - self.limits.max_line;
                        self.buf.clear();
                        self.discarding = true;
                        let limit = self.limits.max_line;
                        self.violation(now, Violation::LineTooLong { limit }, &mut events);
                    } else {
                        if self.buf.capacity() == 0 {
                            self.buf.reserve_exact(self.limits.max_line + 1);
                        }
                        self.buf.extend_from_slice(rest);
                    }
                    rest = &[];
                }
            }
        }
        events
    }

    fn count_discarded(&mut self, n: usize) {
        self.counters.discarded_bytes = self.counters.discarded_bytes.saturating_add(n as u64);
    }

    fn check_partial_timeout(&mut self, now: Instant, events: &mut Vec<Event>) {
        let Some(since) = self.partial_since else {
            return;
        };
        if self.is_closed() || now < since + self.limits.partial_line_timeout {
            return;
        }
        let bytes = self.buf.len();
        self.count_discarded(bytes);
        self.buf.clear();
        // The rest of this line, whenever it comes, is garbage.
        self.discarding = true;
        self.discard_run = 0;
        self.partial_since = None;
        let waited_ms = now.saturating_duration_since(since).as_millis() as u64;
        self.violation(
            now,
            Violation::PartialLineTimeout { bytes, waited_ms },
            events,
        );
    }

    /// One complete line (without its newline).
    fn line(&mut self, now: Instant, line: &[u8], events: &mut Vec<Event>) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let bucket = if looks_v2(line) {
            &mut self.v2_bucket
        } else {
            &mut self.bucket
        };
        if !bucket.take(now) {
            self.counters.rate_limited_lines += 1;
            self.unreported_drops += 1;
            let due = self.last_rate_violation.is_none_or(|t| {
                now.saturating_duration_since(t) >= self.limits.rate_violation_interval
            });
            if due {
                self.last_rate_violation = Some(now);
                let violation = Violation::RateLimited {
                    dropped: std::mem::take(&mut self.unreported_drops),
                    per_second: self.limits.lines_per_second,
                    burst: self.limits.burst,
                };
                self.violation(now, violation, events);
            }
            return;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        match parse_line(line) {
            Err(_) if crate::v2::is_guest_kind(line) => self.guest_line(now, line, events),
            Err(v) => self.violation(now, v, events),
            Ok(Message::Hello(hello)) => match check_hello(&hello) {
                Err(v) => self.violation(now, v, events),
                Ok(()) => {
                    self.counters.hellos += 1;
                    self.streak = 0;
                    let hello = Arc::new(hello);
                    events.push(Event::Hello(Arc::clone(&hello)));
                    // A new hello starts a new sequence (the agent may have
                    // restarted); the last report stays the latest known view.
                    let last_report = match std::mem::replace(&mut self.phase, Phase::Closed) {
                        Phase::Ready { last_report, .. } => last_report,
                        _ => None,
                    };
                    self.phase = Phase::Ready {
                        hello,
                        last_seq: None,
                        last_report,
                    };
                }
            },
            Ok(Message::Report(report)) => {
                let Phase::Ready {
                    hello,
                    last_seq,
                    last_report,
                } = &mut self.phase
                else {
                    self.violation(now, Violation::ReportBeforeHello, events);
                    return;
                };
                match check_report(&report, hello, *last_seq) {
                    Err(v) => self.violation(now, v, events),
                    Ok(()) => {
                        *last_seq = Some(report.seq);
                        let report = Arc::new(report);
                        *last_report = Some((Arc::clone(&report), now));
                        self.counters.reports += 1;
                        self.streak = 0;
                        events.push(Event::Report(report));
                    }
                }
            }
        }
    }

    /// A line that names a protocol-2 guest message type.
    fn guest_line(&mut self, now: Instant, line: &[u8], events: &mut Vec<Event>) {
        let negotiated = matches!(&self.phase, Phase::Ready { hello, .. } if hello.protocol() >= 2);
        match crate::v2::parse_guest_line(line) {
            Err(v) => self.violation(now, v, events),
            Ok(m) if !negotiated => {
                let kind = match m {
                    crate::v2::GuestMessage::Counters(_) => "counters",
                    crate::v2::GuestMessage::Busy(_) => "busy",
                    crate::v2::GuestMessage::Ack(_) => "ack",
                };
                self.violation(now, Violation::NotNegotiated { kind }, events);
            }
            Ok(m) => {
                self.streak = 0;
                self.counters.v2_messages = self.counters.v2_messages.saturating_add(1);
                events.push(Event::Guest(m));
            }
        }
    }

    fn violation(&mut self, now: Instant, violation: Violation, events: &mut Vec<Event>) {
        self.counters.violations += 1;
        let counts = violation.counts_against_guest();
        events.push(Event::Violation {
            line: self.line_no,
            violation: violation.clone(),
        });
        if !counts {
            return;
        }
        let window = self.limits.violation_window;
        while self
            .recent
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= window)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        self.streak = self.streak.saturating_add(1);
        let reason = if self.recent.len() > self.limits.max_violations {
            DisconnectReason::TooManyViolations {
                count: self.recent.len(),
                window_ms: window.as_millis() as u64,
                last: violation,
            }
        } else if self.streak > self.limits.max_consecutive_violations {
            DisconnectReason::NothingValid {
                count: self.streak,
                last: violation,
            }
        } else {
            return;
        };
        self.close();
        events.push(Event::Disconnect {
            reason,
            reconnect_after: self.limits.reconnect_after,
        });
    }

    fn close(&mut self) {
        self.phase = Phase::Closed;
        self.buf = Vec::new();
        self.recent.clear();
        self.partial_since = None;
    }
}

/// Whether a line starts the way a protocol-2 guest message does (`{"type":"ack"`, `busy` or
/// `counters`, as the agent writes them): a byte comparison made before any parsing, to pick
/// the line's rate bucket. A line that only pretends is parsed, and refused, all the same.
fn looks_v2(line: &[u8]) -> bool {
    ["ack", "busy", "counters"].iter().any(|k| {
        line.strip_prefix(b"{\"type\":\"")
            .and_then(|rest| rest.strip_prefix(k.as_bytes()))
            .is_some_and(|rest| rest.first() == Some(&b'"'))
    })
}

/// The index of the first `\n` in `bytes`, eight bytes at a time (a plain
/// `position` looks at one byte per step; lines here are kilobytes long).
fn find_newline(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    const NEWLINES: u64 = u64::from_ne_bytes([b'\n'; 8]);
    let mut chunks = bytes.chunks_exact(8);
    let mut offset = 0;
    for chunk in chunks.by_ref() {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        // A zero byte of `x` is a newline of the chunk; this test has no false
        // negatives, and a hit is confirmed byte by byte below.
        let x = u64::from_ne_bytes(word) ^ NEWLINES;
        if x.wrapping_sub(ONES) & !x & HIGHS != 0 {
            if let Some(i) = chunk.iter().position(|&b| b == b'\n') {
                return Some(offset + i);
            }
        }
        offset += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| offset + i)
}

impl Default for IngestSession {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

#[cfg(test)]
#[path = "ingest_tests.rs"]
mod tests;
