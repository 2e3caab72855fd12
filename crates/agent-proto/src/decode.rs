//! One-pass decoding of a [`Message`]: the `"type"` tag is read as it comes and
//! every other field goes straight into the fields of a [`Hello`] or [`Report`].
//!
//! serde's derived internally tagged enums (`#[serde(tag = "type")]`) cannot know
//! where the tag is, so they first copy the whole object into a generic tree of
//! owned values and decode that a second time: for a 50-process report that is a
//! few hundred extra allocations per line, most of the host's ingest time. This
//! visitor instead keeps one slot per field of either message and fills it from
//! the JSON as the keys arrive. The agent writes `"type"` first, so from then on
//! every key is checked against that message's fields (an unknown one is refused
//! at once, as `deny_unknown_fields` would) and `"gpus"` is decoded into its
//! element type directly. When `"gpus"` comes before `"type"` (allowed, if odd),
//! its elements go into [`AnyGpu`], which has the fields of both element types,
//! and are converted once the type is known: still one pass, no buffering.
//!
//! Version and problem classification stay in [`crate::parse_line`]: the visitor
//! refuses a `"v"` other than [`PROTOCOL_VERSION`] at once, and any failure there
//! is re-examined with a lenient envelope so that a newer version is reported as
//! such and not as the unknown fields it brings.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use crate::message::{
    CollectorKind, GpuInfo, GpuSample, Hello, Message, ProcessSample, Report, PROTOCOL_VERSION,
};

/// The two message kinds, as named by `"type"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Hello,
    Report,
}

const KINDS: &[&str] = &["hello", "report"];
const HELLO_FIELDS: &[&str] = &[
    "type",
    "v",
    "agent",
    "os",
    "kernel",
    "driver",
    "protocol",
    "collector",
    "gpus",
];
const REPORT_FIELDS: &[&str] = &[
    "type",
    "v",
    "seq",
    "ts_ms",
    "gpus",
    "processes",
    "processes_omitted",
];
const ANY_FIELDS: &[&str] = &[
    "type",
    "v",
    "agent",
    "os",
    "kernel",
    "driver",
    "protocol",
    "collector",
    "gpus",
    "seq",
    "ts_ms",
    "processes",
    "processes_omitted",
];

impl Kind {
    fn fields(kind: Option<Kind>) -> &'static [&'static str] {
        match kind {
            Some(Kind::Hello) => HELLO_FIELDS,
            Some(Kind::Report) => REPORT_FIELDS,
            None => ANY_FIELDS,
        }
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KindVisitor;
        impl Visitor<'_> for KindVisitor {
            type Value = Kind;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a message type, \"hello\" or \"report\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Kind, E> {
                match s {
                    "hello" => Ok(Kind::Hello),
                    "report" => Ok(Kind::Report),
                    other => Err(E::unknown_variant(other, KINDS)),
                }
            }
        }
        d.deserialize_str(KindVisitor)
    }
}

/// A key of either message, read without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Type,
    V,
    Agent,
    Os,
    Kernel,
    Driver,
    Protocol,
    Collector,
    Gpus,
    Seq,
    TsMs,
    Processes,
    ProcessesOmitted,
}

impl Key {
    /// Whether the key belongs to a message of `kind` (any key belongs while the
    /// kind is not known yet).
    fn belongs_to(self, kind: Option<Kind>) -> bool {
        match (self, kind) {
            (Key::Type | Key::V | Key::Gpus, _) | (_, None) => true,
            (
                Key::Agent | Key::Os | Key::Kernel | Key::Driver | Key::Protocol | Key::Collector,
                Some(k),
            ) => k == Kind::Hello,
            (Key::Seq | Key::TsMs | Key::Processes | Key::ProcessesOmitted, Some(k)) => {
                k == Kind::Report
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            Key::Type => "type",
            Key::V => "v",
            Key::Agent => "agent",
            Key::Os => "os",
            Key::Kernel => "kernel",
            Key::Driver => "driver",
            Key::Protocol => "protocol",
            Key::Collector => "collector",
            Key::Gpus => "gpus",
            Key::Seq => "seq",
            Key::TsMs => "ts_ms",
            Key::Processes => "processes",
            Key::ProcessesOmitted => "processes_omitted",
        }
    }
}

/// Reads a key, refusing unknown ones with the field list of the kind known so far.
struct KeySeed(Option<Kind>);

impl<'de> de::DeserializeSeed<'de> for KeySeed {
    type Value = Key;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Key;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Key, E> {
        let key = match s {
            "type" => Key::Type,
            "v" => Key::V,
            "agent" => Key::Agent,
            "os" => Key::Os,
            "kernel" => Key::Kernel,
            "driver" => Key::Driver,
            "protocol" => Key::Protocol,
            "collector" => Key::Collector,
            "gpus" => Key::Gpus,
            "seq" => Key::Seq,
            "ts_ms" => Key::TsMs,
            "processes" => Key::Processes,
            "processes_omitted" => Key::ProcessesOmitted,
            other => return Err(E::unknown_field(other, Kind::fields(self.0))),
        };
        if key.belongs_to(self.0) {
            Ok(key)
        } else {
            Err(E::unknown_field(s, Kind::fields(self.0)))
        }
    }
}

/// A GPU entry read before the message's type was known: the fields of
/// [`GpuInfo`] and [`GpuSample`] together.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnyGpu {
    index: u32,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    uuid: Option<String>,
    #[serde(default)]
    memory_total_bytes: Option<u64>,
    #[serde(default)]
    util_sm_pct: Option<u32>,
    #[serde(default)]
    util_mem_pct: Option<u32>,
    #[serde(default)]
    memory_used_bytes: Option<u64>,
}

impl AnyGpu {
    fn into_info<E: de::Error>(self) -> Result<GpuInfo, E> {
        let stray = [
            ("util_sm_pct", self.util_sm_pct.is_some()),
            ("util_mem_pct", self.util_mem_pct.is_some()),
            ("memory_used_bytes", self.memory_used_bytes.is_some()),
        ];
        if let Some((field, _)) = stray.iter().find(|(_, set)| *set) {
            return Err(E::unknown_field(
                field,
                &["index", "name", "uuid", "memory_total_bytes"],
            ));
        }
        Ok(GpuInfo {
            index: self.index,
            name: self.name.ok_or_else(|| E::missing_field("name"))?,
            uuid: self.uuid,
            memory_total_bytes: self.memory_total_bytes,
        })
    }

    fn into_sample<E: de::Error>(self) -> Result<GpuSample, E> {
        let stray = [
            ("name", self.name.is_some()),
            ("uuid", self.uuid.is_some()),
            ("memory_total_bytes", self.memory_total_bytes.is_some()),
        ];
        if let Some((field, _)) = stray.iter().find(|(_, set)| *set) {
            return Err(E::unknown_field(
                field,
                &["index", "util_sm_pct", "util_mem_pct", "memory_used_bytes"],
            ));
        }
        Ok(GpuSample {
            index: self.index,
            util_sm_pct: self.util_sm_pct,
            util_mem_pct: self.util_mem_pct,
            memory_used_bytes: self.memory_used_bytes,
        })
    }
}

/// The `"gpus"` list in whichever form it could be read.
enum Gpus {
    Info(Vec<GpuInfo>),
    Sample(Vec<GpuSample>),
    Any(Vec<AnyGpu>),
}

impl Gpus {
    fn into_info<E: de::Error>(self) -> Result<Vec<GpuInfo>, E> {
        match self {
            Gpus::Info(v) => Ok(v),
            Gpus::Any(v) => v.into_iter().map(AnyGpu::into_info).collect(),
            // Only read as samples once the type said "report".
            Gpus::Sample(_) => Err(E::custom("a hello's gpus were read as a report's")),
        }
    }

    fn into_sample<E: de::Error>(self) -> Result<Vec<GpuSample>, E> {
        match self {
            Gpus::Sample(v) => Ok(v),
            Gpus::Any(v) => v.into_iter().map(AnyGpu::into_sample).collect(),
            Gpus::Info(_) => Err(E::custom("a report's gpus were read as a hello's")),
        }
    }
}

/// One slot per field of either message.
#[derive(Default)]
struct Slots {
    kind: Option<Kind>,
    v: Option<u64>,
    agent: Option<String>,
    os: Option<String>,
    kernel: Option<String>,
    driver: Option<Option<String>>,
    protocol: Option<Option<u32>>,
    collector: Option<CollectorKind>,
    gpus: Option<Gpus>,
    seq: Option<u64>,
    ts_ms: Option<u64>,
    processes: Option<Vec<ProcessSample>>,
    processes_omitted: Option<u64>,
}

fn put<T, E: de::Error>(slot: &mut Option<T>, key: Key, value: T) -> Result<(), E> {
    if slot.is_some() {
        return Err(E::duplicate_field(key.name()));
    }
    *slot = Some(value);
    Ok(())
}

fn need<T, E: de::Error>(slot: Option<T>, field: &'static str) -> Result<T, E> {
    slot.ok_or_else(|| E::missing_field(field))
}

impl Slots {
    fn read<'de, A: MapAccess<'de>>(&mut self, key: Key, map: &mut A) -> Result<(), A::Error> {
        match key {
            Key::Type => {
                let kind: Kind = map.next_value()?;
                put(&mut self.kind, key, kind)?;
                // Fields read before the type must belong to it.
                let stray = match kind {
                    Kind::Hello => [
                        ("seq", self.seq.is_some()),
                        ("ts_ms", self.ts_ms.is_some()),
                        ("processes", self.processes.is_some()),
                        ("processes_omitted", self.processes_omitted.is_some()),
                    ]
                    .into_iter()
                    .find(|(_, set)| *set),
                    Kind::Report => [
                        ("agent", self.agent.is_some()),
                        ("os", self.os.is_some()),
                        ("kernel", self.kernel.is_some()),
                        ("driver", self.driver.is_some()),
                        ("protocol", self.protocol.is_some()),
                        ("collector", self.collector.is_some()),
                    ]
                    .into_iter()
                    .find(|(_, set)| *set),
                };
                if let Some((field, _)) = stray {
                    return Err(de::Error::unknown_field(field, Kind::fields(Some(kind))));
                }
            }
            Key::V => {
                let v: u64 = map.next_value()?;
                if v != u64::from(PROTOCOL_VERSION) {
                    // parse_line turns this into UnsupportedVersion.
                    return Err(de::Error::custom(format_args!(
                        "protocol version {v} is not {PROTOCOL_VERSION}"
                    )));
                }
                put(&mut self.v, key, v)?;
            }
            Key::Agent => put(&mut self.agent, key, map.next_value()?)?,
            Key::Os => put(&mut self.os, key, map.next_value()?)?,
            Key::Kernel => put(&mut self.kernel, key, map.next_value()?)?,
            Key::Driver => put(&mut self.driver, key, map.next_value()?)?,
            Key::Protocol => put(&mut self.protocol, key, map.next_value()?)?,
            Key::Collector => put(&mut self.collector, key, map.next_value()?)?,
            Key::Gpus => {
                let gpus = match self.kind {
                    Some(Kind::Hello) => Gpus::Info(map.next_value()?),
                    Some(Kind::Report) => Gpus::Sample(map.next_value()?),
                    None => Gpus::Any(map.next_value()?),
                };
                put(&mut self.gpus, key, gpus)?;
            }
            Key::Seq => put(&mut self.seq, key, map.next_value()?)?,
            Key::TsMs => put(&mut self.ts_ms, key, map.next_value()?)?,
            Key::Processes => put(&mut self.processes, key, map.next_value()?)?,
            Key::ProcessesOmitted => put(&mut self.processes_omitted, key, map.next_value()?)?,
        }
        Ok(())
    }

    fn finish<E: de::Error>(self) -> Result<Message, E> {
        let kind = need(self.kind, "type")?;
        let v = need(self.v, "v")?;
        let gpus = need(self.gpus, "gpus")?;
        Ok(match kind {
            Kind::Hello => Message::Hello(Hello {
                v,
                agent: need(self.agent, "agent")?,
                os: need(self.os, "os")?,
                kernel: need(self.kernel, "kernel")?,
                driver: self.driver.flatten(),
                protocol: self.protocol.flatten(),
                collector: need(self.collector, "collector")?,
                gpus: gpus.into_info()?,
            }),
            Kind::Report => Message::Report(Report {
                v,
                seq: need(self.seq, "seq")?,
                ts_ms: need(self.ts_ms, "ts_ms")?,
                gpus: gpus.into_sample()?,
                processes: need(self.processes, "processes")?,
                processes_omitted: self.processes_omitted.unwrap_or(0),
            }),
        })
    }
}

struct MessageVisitor;

impl<'de> Visitor<'de> for MessageVisitor {
    type Value = Message;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a protocol message (a JSON object with \"type\" and \"v\")")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Message, A::Error> {
        let mut slots = Slots::default();
        while let Some(key) = map.next_key_seed(KeySeed(slots.kind))? {
            slots.read(key, &mut map)?;
        }
        slots.finish()
    }
}

impl<'de> Deserialize<'de> for Message {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(MessageVisitor)
    }
}

/// The fields every version has; read only when the one-pass decode failed, so
/// that a newer version is reported as such and not as a pile of unknown fields.
#[derive(Deserialize)]
pub(crate) struct Envelope {
    pub(crate) v: u64,
    #[serde(rename = "type")]
    _kind: IgnoredAny,
}

#[cfg(test)]
#[path = "decode_tests.rs"]
mod tests;
