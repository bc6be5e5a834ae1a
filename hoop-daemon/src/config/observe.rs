//! `[[observe]]`: observe mode for named identities, until a set time.
//! A request no connection covers is then forwarded (verified TLS, never a
//! credential) and recorded as `observed`, with the refusal it would have
//! had; `hoop policy suggest` reads those records. Off unless an entry
//! names the job's identity.
use serde::Deserialize;

use super::policy::Problem;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObserveConfig {
    /// Identity globs (`ci:repo:acme/*`): the jobs observed. Required.
    pub identities: Vec<String>,
    /// When observing ends, RFC 3339 (`2026-12-31T00:00:00Z`). Required:
    /// observe mode is never open-ended.
    pub until: String,
    /// Only jobs started with `hoop run --observe` (by root or the control
    /// group, from outside any job); otherwise every job of these
    /// identities.
    #[serde(default)]
    pub flagged_only: bool,
}

impl ObserveConfig {
    /// `until` as milliseconds since the epoch.
    pub fn until_ms(&self) -> Result<u64, String> {
        let t = chrono::DateTime::parse_from_rfc3339(self.until.trim()).map_err(|e| {
            format!(
                "{:?} is not an RFC 3339 time like \"2026-12-31T00:00:00Z\" ({e})",
                self.until
            )
        })?;
        u64::try_from(t.timestamp_millis()).map_err(|_| format!("{:?} is before 1970", self.until))
    }

    /// Checks what needs no IO (the globs are compiled with the policy).
    pub fn check(&self, i: usize) -> Result<(), Problem> {
        if self.identities.is_empty() {
            return Err(Problem::at(
                format!("observe[{i}].identities"),
                "must name at least one identity glob (\"ci:repo:acme/*\"): observe mode is for named jobs only",
            ));
        }
        if let Some((j, _)) = self
            .identities
            .iter()
            .enumerate()
            .find(|(_, g)| g.trim().is_empty())
        {
            return Err(Problem::at(
                format!("observe[{i}].identities[{j}]"),
                "is empty",
            ));
        }
        self.until_ms()
            .map_err(|p| Problem::at(format!("observe[{i}].until"), p))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ids: &[&str], until: &str) -> ObserveConfig {
        ObserveConfig {
            identities: ids.iter().map(|s| s.to_string()).collect(),
            until: until.into(),
            flagged_only: false,
        }
    }

    #[test]
    fn an_entry_names_identities_and_ends() {
        let e = entry(&["ci:repo:acme/*"], "2026-12-31T00:00:00Z");
        assert_eq!(e.check(0), Ok(()));
        assert_eq!(e.until_ms(), Ok(1_798_675_200_000));
        // An offset is a time too.
        assert_eq!(
            entry(&["x"], "2026-12-31T01:00:00+01:00").until_ms(),
            Ok(1_798_675_200_000)
        );
        let p = entry(&[], "2026-12-31T00:00:00Z").check(2).unwrap_err();
        assert_eq!(p.key, "observe[2].identities");
        let p = entry(&["ci:*", " "], "2026-12-31T00:00:00Z")
            .check(0)
            .unwrap_err();
        assert_eq!(p.key, "observe[0].identities[1]");
        for bad in ["2026-12-31", "tomorrow", "", "2026-13-01T00:00:00Z"] {
            let p = entry(&["ci:*"], bad).check(1).unwrap_err();
            assert_eq!(p.key, "observe[1].until", "{bad}");
            assert!(p.problem.contains("RFC 3339"), "{bad}: {}", p.problem);
        }
    }
}
