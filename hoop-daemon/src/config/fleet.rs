//! `[fleet]`: many hosts, one record. Each host ships its committed audit
//! batches to a PostgreSQL that all of them share; the local SQLite stays
//! the durable store the request path waits on. Off unless `postgres` is
//! set.
use std::path::PathBuf;

use serde::Deserialize;

use super::policy::{Problem, SecretSource};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// The server, as a `postgres://` URL (libpq's form: user, password,
    /// host, port, dbname, `sslmode`, `sslrootcert`), inline or read from
    /// a file, a variable or a systemd credential when it holds a
    /// password. None: no fleet.
    #[serde(default)]
    pub postgres: Option<PgUrl>,
    /// This host's name in the fleet: stable across restarts, unique in
    /// the fleet. Default: the machine id (`/etc/machine-id`).
    #[serde(default)]
    pub host_id: Option<String>,
    /// The CA that signed the server's certificate (PEM). Default: the
    /// system's trust store. `sslrootcert` in the URL says the same.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The most records the local log keeps for a server that does not
    /// take them (down, unreachable): the spool's cap.
    #[serde(default = "default_max_unshipped")]
    pub max_unshipped: u64,
    /// What happens at the cap.
    #[serde(default)]
    pub when_full: WhenFull,
}

/// At the spool's cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhenFull {
    /// Requests are refused (503, `fleet-spool-full`) until the server
    /// has taken enough: nothing goes unrecorded on the server.
    #[default]
    Refuse,
    /// Requests go on; the oldest records the server lacks are removed
    /// from the local log (through a signed checkpoint, which stays as the
    /// anchor of the rest) and a `dropped` record says which: chained and
    /// signed, it reaches the server, whose `verify --fleet` accepts that
    /// gap and no other. The record of those requests is lost.
    DropOldest,
}

/// About 0.5 GB of spool at the typical record's 273 bytes.
pub const DEFAULT_MAX_UNSHIPPED: u64 = 2_000_000;

fn default_max_unshipped() -> u64 {
    DEFAULT_MAX_UNSHIPPED
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            postgres: None,
            host_id: None,
            ca_file: None,
            max_unshipped: DEFAULT_MAX_UNSHIPPED,
            when_full: WhenFull::default(),
        }
    }
}

/// The server's URL, or where to read it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PgUrl {
    Inline(String),
    Secret(SecretSource),
}

/// The longest host id: it is a key in every shipped row.
pub const MAX_HOST_ID: usize = 128;

impl FleetConfig {
    pub fn enabled(&self) -> bool {
        self.postgres.is_some()
    }

    /// Checks what needs no IO.
    pub fn check(&self) -> Result<(), Problem> {
        if let Some(PgUrl::Inline(url)) = &self.postgres
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return Err(Problem::at(
                "fleet.postgres",
                "must be a postgres:// URL, or { file = … } / { env = … } / { credential = … } to read one",
            ));
        }
        if let Some(id) = &self.host_id {
            check_host_id(id).map_err(|p| Problem::at("fleet.host_id", p))?;
        }
        if self.max_unshipped < 100 {
            return Err(Problem::at(
                "fleet.max_unshipped",
                "must be at least 100 records (a request and its response are two)",
            ));
        }
        Ok(())
    }
}

/// A host id: 1 to 128 of letters, digits, `.`, `-`, `_`, `:`.
pub fn check_host_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_HOST_ID {
        return Err(format!("must be 1 to {MAX_HOST_ID} characters"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':')))
    {
        return Err(format!(
            "{c:?} is not allowed (letters, digits, '.', '-', '_', ':')"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ids_are_plain_names() {
        for ok in ["runner-7", "a1b2c3d4e5f6", "ci.example:eu_1"] {
            assert_eq!(check_host_id(ok), Ok(()), "{ok}");
        }
        for bad in ["", "a b", "x/y", "é", &"x".repeat(129)] {
            assert!(check_host_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_url_is_a_postgres_url_or_a_source() {
        let inline = |u: &str| FleetConfig {
            postgres: Some(PgUrl::Inline(u.into())),
            ..Default::default()
        };
        assert!(inline("postgres://hoop@db/hoop").check().is_ok());
        assert!(
            inline("postgresql://db/hoop?sslmode=verify-full")
                .check()
                .is_ok()
        );
        let e = inline("mysql://db").check().unwrap_err();
        assert_eq!(e.key, "fleet.postgres");
        let parsed: FleetConfig =
            toml::from_str("postgres = { env = \"HOOP_PG\" }\nhost_id = \"r1\"").unwrap();
        assert_eq!(
            parsed.postgres,
            Some(PgUrl::Secret(SecretSource {
                file: None,
                env: Some("HOOP_PG".into()),
                credential: None
            }))
        );
    }
}
