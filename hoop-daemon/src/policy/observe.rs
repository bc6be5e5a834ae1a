//! Observe mode, compiled: which jobs a request no connection covers is
//! forwarded for (and recorded as `observed`) instead of refused. Pure:
//! the caller gives the time.
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

use crate::config::{Config, ConfigError};

#[derive(Debug, Default)]
pub struct Observe {
    entries: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    identities: GlobSet,
    globs: Vec<String>,
    until_ms: u64,
    until: String,
    flagged_only: bool,
}

/// An `[[observe]]` entry as `hoop status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObserveStatus {
    pub identities: Vec<String>,
    pub until: String,
    pub flagged_only: bool,
    /// Not yet past `until`.
    pub active: bool,
}

/// `ON for ci:repo:acme/* until 2026-12-31T00:00:00Z (jobs started
/// with --observe)`: how `hoop status` and `check-config` say it.
impl std::fmt::Display for ObserveStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} for {} until {}{}",
            if self.active { "ON" } else { "ended" },
            self.identities.join(", "),
            self.until,
            if self.flagged_only {
                " (jobs started with --observe)"
            } else {
                ""
            }
        )
    }
}

impl Observe {
    pub fn compile(cfg: &Config) -> Result<Self, ConfigError> {
        let mut entries = Vec::new();
        for (i, o) in cfg.observe.iter().enumerate() {
            let mut set = GlobSetBuilder::new();
            for (j, g) in o.identities.iter().enumerate() {
                let glob = GlobBuilder::new(g.trim())
                    .literal_separator(false)
                    .build()
                    .map_err(|e| {
                        cfg.invalid(
                            &format!("observe[{i}].identities[{j}]"),
                            format!("is not a valid glob: {e}"),
                        )
                    })?;
                set.add(glob);
            }
            let identities = set
                .build()
                .map_err(|e| cfg.invalid(&format!("observe[{i}].identities"), e.to_string()))?;
            let until_ms = o
                .until_ms()
                .map_err(|p| cfg.invalid(&format!("observe[{i}].until"), p))?;
            entries.push(Entry {
                identities,
                globs: o.identities.clone(),
                until_ms,
                until: o.until.clone(),
                flagged_only: o.flagged_only,
            });
        }
        Ok(Self { entries })
    }

    /// Whether a job of `identity` is observed at `now_ms`: an entry not
    /// yet ended names it, and applies to every job of it or the job was
    /// started with `hoop run --observe` (`flagged`).
    pub fn applies(&self, identity: &str, flagged: bool, now_ms: u64) -> bool {
        self.entries.iter().any(|e| {
            now_ms < e.until_ms && (flagged || !e.flagged_only) && e.identities.is_match(identity)
        })
    }

    /// Whether `hoop run --observe` may start a job of `identity` now: an
    /// entry not yet ended names it.
    pub fn permits_flag(&self, identity: &str, now_ms: u64) -> bool {
        self.applies(identity, true, now_ms)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn status(&self, now_ms: u64) -> Vec<ObserveStatus> {
        self.entries
            .iter()
            .map(|e| ObserveStatus {
                identities: e.globs.clone(),
                until: e.until.clone(),
                flagged_only: e.flagged_only,
                active: now_ms < e.until_ms,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn observe(text: &str) -> Observe {
        let cfg = Config::parse(text, Path::new("/etc/hoop/o.toml")).unwrap();
        Observe::compile(&cfg).unwrap()
    }

    const UNTIL: u64 = 1_798_675_200_000; // 2026-12-31T00:00:00Z

    #[test]
    fn only_named_identities_until_the_end_and_flagged_where_asked() {
        let o = observe(
            r#"
[[observe]]
identities = ["ci:repo:acme/*"]
until = "2026-12-31T00:00:00Z"

[[observe]]
identities = ["local:scraper"]
until = "2026-12-31T00:00:00Z"
flagged_only = true
"#,
        );
        let before = UNTIL - 1;
        let table = [
            // identity, flagged, now, observed
            (
                "ci:repo:acme/scraper:ref:refs/heads/main",
                false,
                before,
                true,
            ),
            (
                "ci:repo:acme/scraper:ref:refs/heads/main",
                true,
                before,
                true,
            ),
            (
                "ci:repo:acme/scraper:ref:refs/heads/main",
                false,
                UNTIL,
                false,
            ),
            ("ci:repo:evil/x", false, before, false),
            ("ci:repo:evil/x", true, before, false),
            ("ci:repo:acme", false, before, false),
            ("local:scraper", false, before, false),
            ("local:scraper", true, before, true),
            ("local:scraper", true, UNTIL + 1, false),
            ("local:scraper-2", true, before, false),
        ];
        for (id, flagged, now, want) in table {
            assert_eq!(o.applies(id, flagged, now), want, "{id} {flagged} {now}");
        }
        assert!(o.permits_flag("local:scraper", before));
        assert!(!o.permits_flag("ci:repo:evil/x", before));
        let s = o.status(UNTIL);
        assert_eq!(s.len(), 2);
        assert!(s.iter().all(|e| !e.active));
        assert!(observe("").is_empty());
        assert!(!observe("").applies("anyone", true, 0));
    }

    #[test]
    fn a_bad_entry_is_located() {
        let e = Config::parse(
            "[[observe]]\nidentities = [\"ci:*\"]\nuntil = \"soon\"\n",
            Path::new("/etc/hoop/o.toml"),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("observe[0].until") && e.contains("o.toml:3:"),
            "{e}"
        );
        let e = Config::parse(
            "[[observe]]\nidentities = []\nuntil = \"2026-12-31T00:00:00Z\"\n",
            Path::new("/etc/hoop/o.toml"),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("observe[0].identities"), "{e}");
        let cfg = Config::parse(
            "[[observe]]\nidentities = [\"ci:[\"]\nuntil = \"2026-12-31T00:00:00Z\"\n",
            Path::new("/etc/hoop/o.toml"),
        )
        .unwrap();
        let e = Observe::compile(&cfg).unwrap_err().to_string();
        assert!(
            e.contains("observe[0].identities[0]") && e.contains("glob"),
            "{e}"
        );
    }
}
