//! Durations as the config and the CLI write them, typed at load.
use std::time::Duration;

use serde::{Deserialize, Deserializer};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a duration like 90s, 10m, 2h, 1d or 1h30m")]
pub struct BadDuration(String);

/// "90s", "10m", "2h", "1d", "1h30m" (humantime's units), or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, BadDuration> {
    let s = s.trim();
    let bad = || BadDuration(s.to_string());
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map(Duration::from_secs).map_err(|_| bad());
    }
    humantime::parse_duration(s).map_err(|_| bad())
}

/// A duration field of the config: parsed while the file is read, so a bad
/// one is refused with its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Human(pub Duration);

impl TryFrom<String> for Human {
    type Error = BadDuration;
    fn try_from(s: String) -> Result<Self, BadDuration> {
        parse_duration(&s).map(Self)
    }
}

impl From<Human> for Duration {
    fn from(h: Human) -> Duration {
        h.0
    }
}

/// An optional duration where an empty string also means "none".
pub fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Human>, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() {
        return Ok(None);
    }
    parse_duration(&s)
        .map(|d| Some(Human(d)))
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration(" 90s ").unwrap(), Duration::from_secs(90));
        for bad in ["", "ten minutes", "-5s", "5x", "1.5.2h"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.to_string().contains("not a duration"), "{bad}: {e}");
        }
    }

    #[test]
    fn config_fields_are_typed_at_load() {
        #[derive(Deserialize)]
        struct T {
            every: Human,
            #[serde(default, deserialize_with = "optional")]
            retain: Option<Human>,
        }
        let t: T = toml::from_str("every = \"2h\"\nretain = \"\"\n").unwrap();
        assert_eq!(Duration::from(t.every), Duration::from_secs(7200));
        assert_eq!(t.retain, None);
        let t: T = toml::from_str("every = \"1s\"\nretain = \"30d\"\n").unwrap();
        assert_eq!(t.retain, Some(Human(Duration::from_secs(30 * 86400))));
        let e = toml::from_str::<T>("every = \"1s\"\nretain = \"soon\"\n")
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("\"soon\" is not a duration") && e.contains("line 2"),
            "{e}"
        );
    }
}
