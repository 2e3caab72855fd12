//! Byte quantities written the way operators write them: `20GiB`, `512M`, `1.5GiB`, `4096`.
//!
//! `K`/`M`/`G`/`T` and `KiB`/`MiB`/`GiB`/`TiB` are powers of 1024, `KB`/`MB`/`GB`/`TB` powers of
//! 1000, `B` or no unit means bytes; units are case-insensitive and may follow a space. A fraction
//! is allowed when it comes to a whole number of bytes (`1.5GiB`, not `1.3KiB`). "Unlimited" is
//! deliberately not a `ByteSize`: a vGPU type always has a finite memory limit.
//!
//! [`ByteSize`]'s `Display` picks the largest binary unit that is exact (`20GiB`, `1536MiB`), else
//! plain bytes, so printing and parsing round-trip.

use std::fmt;
use std::str::FromStr;

/// A number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

/// Why a string is not a [`ByteSize`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size '{}': {reason}; write a number with an optional unit ({VALID_UNITS}), e.g. 20GiB", crate::error::excerpt(.input, 40))]
pub struct ParseByteSizeError {
    /// The text that was given.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The units [`ByteSize::from_str`] accepts, for messages.
pub const VALID_UNITS: &str =
    "B, K/KiB, M/MiB, G/GiB, T/TiB (powers of 1024), KB, MB, GB, TB (powers of 1000)";

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

impl ByteSize {
    /// `n` KiB.
    pub const fn kib(n: u64) -> Self {
        ByteSize(n * KIB)
    }
    /// `n` MiB.
    pub const fn mib(n: u64) -> Self {
        ByteSize(n * MIB)
    }
    /// `n` GiB.
    pub const fn gib(n: u64) -> Self {
        ByteSize(n * GIB)
    }
    /// The number of bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

fn unit_multiplier(unit: &str) -> Option<u64> {
    let m = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => KIB,
        "m" | "mib" => MIB,
        "g" | "gib" => GIB,
        "t" | "tib" => TIB,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return None,
    };
    Some(m)
}

impl FromStr for ByteSize {
    type Err = ParseByteSizeError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |reason: &str| ParseByteSizeError {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let s = input.trim();
        let num_end = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
            .unwrap_or(s.len());
        let (number, unit) = s.split_at(num_end);
        let number = number.replace('_', "");
        let unit = unit.trim_start();
        if number.is_empty() {
            return Err(fail("it does not start with a number"));
        }
        let multiplier = unit_multiplier(unit).ok_or_else(|| {
            fail(&format!(
                "unknown unit '{}'",
                crate::error::excerpt(unit, 16)
            ))
        })?;
        let (int_part, frac_part) = match number.split_once('.') {
            Some((i, f)) if !f.contains('.') => (i, f),
            Some(_) => return Err(fail("the number has more than one '.'")),
            None => (number.as_str(), ""),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(fail("it does not start with a number"));
        }
        if frac_part.len() > 18 {
            return Err(fail("too many decimal places"));
        }
        let overflow = || fail("the size does not fit in 64 bits");
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| overflow())?
        };
        let frac: u128 = if frac_part.is_empty() {
            0
        } else {
            frac_part.parse().map_err(|_| overflow())?
        };
        let scale = 10u128.pow(frac_part.len() as u32);
        let scaled = int
            .checked_mul(scale)
            .and_then(|v| v.checked_add(frac))
            .and_then(|v| v.checked_mul(u128::from(multiplier)))
            .ok_or_else(overflow)?;
        if scaled % scale != 0 {
            return Err(fail("it is not a whole number of bytes"));
        }
        u64::try_from(scaled / scale)
            .map(ByteSize)
            .map_err(|_| overflow())
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n == 0 {
            return write!(f, "0");
        }
        for (size, unit) in [(TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")] {
            if n % size == 0 {
                return write!(f, "{}{unit}", n / size);
            }
        }
        write!(f, "{n}")
    }
}

impl serde::Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a size such as \"20GiB\" or a number of bytes")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("a size cannot be negative ({v})")))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<u64, ParseByteSizeError> {
        s.parse::<ByteSize>().map(|b| b.0)
    }

    #[test]
    fn binary_and_decimal_units() {
        assert_eq!(parse("20GiB"), Ok(20 * GIB));
        assert_eq!(parse("20G"), Ok(20 * GIB));
        assert_eq!(parse("20g"), Ok(20 * GIB));
        assert_eq!(parse("20 gib"), Ok(20 * GIB));
        assert_eq!(parse("512MiB"), Ok(512 * MIB));
        assert_eq!(parse("3k"), Ok(3 * KIB));
        assert_eq!(parse("2T"), Ok(2 * TIB));
        assert_eq!(parse("20GB"), Ok(20_000_000_000));
        assert_eq!(parse("7kb"), Ok(7_000));
        assert_eq!(parse("1TB"), Ok(1_000_000_000_000));
        assert_eq!(parse("4096"), Ok(4096));
        assert_eq!(parse("4096B"), Ok(4096));
        assert_eq!(parse(" 1_000 "), Ok(1000));
    }

    #[test]
    fn fractions_must_come_to_whole_bytes() {
        assert_eq!(parse("1.5GiB"), Ok(GIB + GIB / 2));
        assert_eq!(parse("0.5K"), Ok(512));
        assert_eq!(parse(".25MiB"), Ok(MIB / 4));
        assert_eq!(parse("2.500GB"), Ok(2_500_000_000));
        let e = parse("1.3KiB").unwrap_err();
        assert!(e.reason.contains("whole number"), "{e}");
        assert!(parse("1.5").is_err());
    }

    #[test]
    fn errors_name_the_input_and_the_units() {
        for bad in [
            "",
            "GiB",
            "unlimited",
            "-1G",
            "20 XB",
            "1.2.3G",
            ".",
            "20GiBs",
        ] {
            let e = parse(bad).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(&format!("'{bad}'")), "{msg}");
            assert!(msg.contains("KiB") && msg.contains("GB"), "{msg}");
        }
    }

    #[test]
    fn overflow_is_an_error() {
        assert_eq!(parse("18446744073709551615"), Ok(u64::MAX));
        assert!(parse("18446744073709551616").is_err());
        assert!(parse("16777216TiB").is_err());
        assert_eq!(parse("16777215TiB"), Ok(16_777_215 * TIB));
        assert!(parse("99999999999999999999999999999999999999999").is_err());
    }

    #[test]
    fn display_picks_the_largest_exact_binary_unit() {
        assert_eq!(ByteSize::gib(20).to_string(), "20GiB");
        assert_eq!(ByteSize(GIB + GIB / 2).to_string(), "1536MiB");
        assert_eq!(ByteSize(3 * TIB).to_string(), "3TiB");
        assert_eq!(ByteSize(1000).to_string(), "1000");
        assert_eq!(ByteSize(0).to_string(), "0");
        assert_eq!(ByteSize(20_000_000_000).to_string(), "19531250KiB");
    }

    #[test]
    fn display_and_parse_round_trip() {
        let samples = [
            0,
            1,
            1000,
            4096,
            4097,
            MIB,
            3 * GIB + 1,
            80 * GIB,
            7 * TIB,
            u64::MAX,
        ];
        for n in samples {
            let shown = ByteSize(n).to_string();
            assert_eq!(parse(&shown), Ok(n), "{shown}");
        }
    }

    #[test]
    fn serde_uses_the_string_form() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct W {
            m: ByteSize,
        }
        let text = toml::to_string(&W {
            m: ByteSize::gib(20),
        })
        .unwrap();
        assert_eq!(text.trim(), "m = \"20GiB\"");
        let back: W = toml::from_str(&text).unwrap();
        assert_eq!(back.m, ByteSize::gib(20));
        let from_int: Result<W, _> = toml::from_str("m = 4096");
        assert_eq!(from_int.map(|w| w.m).ok(), Some(ByteSize(4096)));
        assert!(toml::from_str::<W>("m = -1").is_err());
        assert!(toml::from_str::<W>("m = \"lots\"").is_err());
    }
}
