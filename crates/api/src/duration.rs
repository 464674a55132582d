//! Durations as the platform writes them: `15s`, `1m`, `1h`, also `500ms`,
//! compound `1m30s`, or a bare number of seconds.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative duration with millisecond precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration {
    millis: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {input:?}: {why} (write e.g. 15s, 1m, 1h, 500ms)")]
pub struct DurationError {
    input: String,
    why: &'static str,
}

impl Duration {
    pub const ZERO: Duration = Duration { millis: 0 };

    pub const fn from_millis(millis: u64) -> Self {
        Duration { millis }
    }

    pub const fn from_secs(secs: u64) -> Self {
        Duration {
            millis: secs.saturating_mul(1000),
        }
    }

    pub const fn as_millis(self) -> u64 {
        self.millis
    }

    pub fn to_std(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.millis)
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.to_std()
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |why| DurationError {
            input: input.to_string(),
            why,
        };
        let s = input.trim();
        if s.is_empty() {
            return Err(err("empty"));
        }
        if s.bytes().all(|b| b.is_ascii_digit()) {
            let secs: u64 = s.parse().map_err(|_| err("number too large"))?;
            return Ok(Duration::from_secs(secs));
        }
        let mut total: u64 = 0;
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
            if digits == 0 {
                return Err(err("expected a number"));
            }
            let value: u64 = rest[..digits]
                .parse()
                .map_err(|_| err("number too large"))?;
            rest = &rest[digits..];
            let unit_len = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
            let per_unit: u64 = match &rest[..unit_len] {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                "" => return Err(err("missing unit after a number")),
                _ => return Err(err("unknown unit")),
            };
            rest = &rest[unit_len..];
            total = value
                .checked_mul(per_unit)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(|| err("too long"))?;
        }
        Ok(Duration { millis: total })
    }
}

impl fmt::Display for Duration {
    /// The shortest exact spelling: `1h`, `1m30s`, `500ms`, `0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.millis;
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
            if ms >= size {
                write!(f, "{}{unit}", ms / size)?;
                ms %= size;
            }
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(Duration::from_secs(s)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// In the OpenAPI document a duration is a string such as `15s` (a bare
/// number of seconds is accepted on input too).
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Duration {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "A duration: `15s`, `1m`, `1h`, `500ms`, compound `1m30s`; \
                 on input also a bare number of seconds",
            ))
            .examples(["15s"])
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Duration {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_platform_spellings() {
        let p = |s: &str| s.parse::<Duration>().map(|d| d.as_millis());
        assert_eq!(p("15s"), Ok(15_000));
        assert_eq!(p("1m"), Ok(60_000));
        assert_eq!(p("1h"), Ok(3_600_000));
        assert_eq!(p("500ms"), Ok(500));
        assert_eq!(p("1m30s"), Ok(90_000));
        assert_eq!(p("7"), Ok(7_000));
        assert!(p("").is_err());
        assert!(p("5x").is_err());
        assert!(p("s").is_err());
        assert!(p("-1s").is_err());
        assert!(p("99999999999999999999h").is_err());
    }

    #[test]
    fn display_round_trips() {
        for s in ["0s", "1h", "1m30s", "500ms", "2h3m4s5ms"] {
            let d: Duration = s.parse().expect("valid");
            assert_eq!(d.to_string(), s);
        }
    }

    #[test]
    fn deserializes_numbers_and_strings() {
        let d: Duration = serde_json::from_str("\"2m\"").expect("string");
        assert_eq!(d.as_millis(), 120_000);
        let d: Duration = serde_json::from_str("3").expect("number");
        assert_eq!(d.as_millis(), 3_000);
        let e = serde_json::from_str::<Duration>("\"3 fortnights\"").expect_err("bad");
        assert!(e.to_string().contains("3 fortnights"), "{e}");
    }
}
