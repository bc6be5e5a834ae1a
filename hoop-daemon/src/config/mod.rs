//! Configuration: embedded defaults, optionally overridden by a TOML file.
//! Unknown keys are errors, and every error names the file, line and key.
pub mod audit;
pub mod console;
pub mod duration;
pub mod fleet;
mod locate;
pub mod mask;
pub mod observe;
pub mod policy;
pub mod rules;

pub use duration::parse_duration;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

/// The defaults, shipped inside the binary and documented in place.
pub const DEFAULT_TOML: &str = include_str!("default.toml");
/// The `source` of the embedded defaults.
pub const EMBEDDED_SOURCE: &str = "<embedded defaults>";
/// Read when no `--config` is given, if it exists.
pub const SYSTEM_CONFIG: &str = "/etc/hoop/hoop.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config {path}{}: `{key}` {problem}", at.map(|(l, c)| format!(":{l}:{c} (line {l}, column {c})")).unwrap_or_default())]
    Invalid {
        path: PathBuf,
        /// 1-based line and column in the file, when the key is in it.
        at: Option<(usize, usize)>,
        key: String,
        problem: String,
    },
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub limits: LimitsConfig,
    pub capture: CaptureConfig,
    pub proxy: ProxyConfig,
    pub egress: EgressConfig,
    pub tls: TlsConfig,
    #[serde(default)]
    pub identity: policy::IdentityConfig,
    #[serde(default, rename = "connection")]
    pub connections: Vec<policy::ConnectionConfig>,
    #[serde(default)]
    pub approvals: policy::ApprovalsConfig,
    pub audit: audit::AuditConfig,
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub console: console::ConsoleConfig,
    #[serde(default)]
    pub fleet: fleet::FleetConfig,
    /// Observe mode for named identities (learn mode); none by default.
    #[serde(default)]
    pub observe: Vec<observe::ObserveConfig>,
    /// Where this config came from, for messages.
    #[serde(skip)]
    pub source: PathBuf,
    /// The file's own text, to locate semantic errors.
    #[serde(skip)]
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    pub state_dir: PathBuf,
    pub runtime_dir: PathBuf,
    pub control_group: String,
    pub connect_timeout_ms: u64,
    pub response_timeout_ms: u64,
    pub handshake_timeout_ms: u64,
}

/// `[limits]`: how long job connections may dawdle and how many there
/// may be, so that one job cannot starve the others.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub header_read_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub upstream_idle_timeout_ms: u64,
    pub max_connections_per_job: usize,
    pub max_connections: usize,
}

impl LimitsConfig {
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    pub fn upstream_idle_timeout(&self) -> Duration {
        Duration::from_millis(self.upstream_idle_timeout_ms)
    }
}

/// `[metrics]`: the Prometheus endpoint, off unless `listen` is set.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// A loopback address, e.g. "127.0.0.1:9108"; empty: no endpoint.
    pub listen: String,
}

impl MetricsConfig {
    pub fn addr(&self) -> Option<std::net::SocketAddr> {
        self.listen.trim().parse().ok()
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    pub listen: Vec<std::net::SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressConfig {
    pub allow: Vec<crate::egress::Cidr>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub upstream_ca_files: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureConfig {
    pub enabled: bool,
    pub cgroup: PathBuf,
    pub bpf_pin_dir: PathBuf,
    pub listen4: Ipv4Addr,
    pub listen6: Ipv6Addr,
    pub listen_port: u16,
    pub dns_resolvers: Vec<IpAddr>,
}

impl Config {
    /// The embedded defaults.
    pub fn embedded() -> Self {
        Self::parse(DEFAULT_TOML, Path::new(EMBEDDED_SOURCE))
            .expect("embedded default config is valid")
    }

    /// `--config PATH` if given (it must exist), else the system config if it
    /// exists, else the embedded defaults.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        match path {
            Some(p) => Self::load_file(p),
            None if Path::new(SYSTEM_CONFIG).exists() => Self::load_file(Path::new(SYSTEM_CONFIG)),
            None => Ok(Self::embedded()),
        }
    }

    pub fn load_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses `text` on top of the embedded defaults, then validates.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let parse_err = |e: toml::de::Error| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_string(),
        };
        let mut merged: toml::Table = DEFAULT_TOML.parse().expect("embedded defaults parse");
        let user: toml::Table = text.parse().map_err(parse_err)?;
        merge(&mut merged, user);
        // Re-serialise so that serde reports unknown keys against the merged
        // table; locations come from the user's text when the error is there.
        let merged_text = toml::to_string(&merged).expect("merged config serialises");
        let mut cfg: Config = match located(&merged_text) {
            Ok(c) => c,
            Err((e, key)) => {
                // Point at the user's own text where possible, and name
                // the key (a typed value's own error doesn't).
                let (e, key) = match located(text) {
                    Err((user_err, key)) if !is_missing_field(&user_err) => (user_err, key),
                    _ => (e, key),
                };
                let mut err = parse_err(e);
                if let (ConfigError::Parse { message, .. }, Some(key)) = (&mut err, key) {
                    *message = format!("`{key}`: {message}");
                }
                return Err(err);
            }
        };
        cfg.source = path.to_owned();
        cfg.text = text.to_owned();
        cfg.validate()?;
        policy::check(&cfg.identity, &cfg.connections)
            .map_err(|p| cfg.invalid(&p.key, p.problem))?;
        Ok(cfg)
    }

    /// An error about `key` (a path like `connection[0].hosts[1]`), located
    /// in the file when the key is there.
    pub fn invalid(&self, key: &str, problem: impl std::fmt::Display) -> ConfigError {
        ConfigError::Invalid {
            path: self.source.clone(),
            at: locate::locate(&self.text, key),
            key: key.to_string(),
            problem: problem.to_string(),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, problem: &str| self.invalid(key, problem);
        if self.capture.listen_port == 0 {
            return Err(bad("capture.listen_port", "must not be 0"));
        }
        // Job TCP sockets are tied to the loopback device (hoop-ebpf's
        // sock_create): their redirected connects reach only loopback.
        if !self.capture.listen4.is_loopback() {
            return Err(bad(
                "capture.listen4",
                "must be a loopback address (jobs' sockets reach only loopback)",
            ));
        }
        if !self.capture.listen6.is_loopback() {
            return Err(bad(
                "capture.listen6",
                "must be ::1 (jobs' sockets reach only loopback)",
            ));
        }
        let cg = &self.capture.cgroup;
        if cg.as_os_str().is_empty()
            || cg.is_absolute()
            || cg
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(bad(
                "capture.cgroup",
                "must be a relative path below the cgroup2 mount, like \"hoop.slice\" (no \"..\")",
            ));
        }
        if !self.capture.bpf_pin_dir.is_absolute() {
            return Err(bad(
                "capture.bpf_pin_dir",
                "must be an absolute path on bpffs",
            ));
        }
        for (key, p) in [
            ("daemon.state_dir", &self.daemon.state_dir),
            ("daemon.runtime_dir", &self.daemon.runtime_dir),
        ] {
            if !p.is_absolute() {
                return Err(bad(key, "must be an absolute path"));
            }
        }
        for (key, v) in [
            ("daemon.connect_timeout_ms", self.daemon.connect_timeout_ms),
            (
                "daemon.response_timeout_ms",
                self.daemon.response_timeout_ms,
            ),
            (
                "daemon.handshake_timeout_ms",
                self.daemon.handshake_timeout_ms,
            ),
            (
                "limits.header_read_timeout_ms",
                self.limits.header_read_timeout_ms,
            ),
            ("limits.idle_timeout_ms", self.limits.idle_timeout_ms),
            (
                "limits.upstream_idle_timeout_ms",
                self.limits.upstream_idle_timeout_ms,
            ),
        ] {
            if v == 0 {
                return Err(bad(key, "must be at least 1"));
            }
        }
        let l = &self.limits;
        if l.max_connections_per_job == 0 {
            return Err(bad(
                "limits.max_connections_per_job",
                "must be at least 1 (0 would refuse every connection)",
            ));
        }
        if l.max_connections < l.max_connections_per_job {
            return Err(bad(
                "limits.max_connections",
                &format!(
                    "must be at least limits.max_connections_per_job ({})",
                    l.max_connections_per_job
                ),
            ));
        }
        if let Err(p) = self.console.check() {
            return Err(bad(&p.key, &p.problem));
        }
        if let Err(p) = self.fleet.check() {
            return Err(bad(&p.key, &p.problem));
        }
        for (i, o) in self.observe.iter().enumerate() {
            if let Err(p) = o.check(i) {
                return Err(bad(&p.key, &p.problem));
            }
        }
        if let policy::SlackSetting::Buttons(s) = &self.approvals.slack {
            if let Some(problem) = webhook_problem(&s.webhook_url) {
                return Err(bad("approvals.slack.webhook_url", &problem));
            }
            if self.console.listen.is_none() {
                return Err(bad(
                    "approvals.slack",
                    "Slack's buttons call back to the console's /slack/interactions: set [console] listen (and [console.oidc])",
                ));
            }
            if self.approvals.webhook.is_some() {
                return Err(bad(
                    "approvals.webhook",
                    "with [approvals.slack], the message goes to approvals.slack.webhook_url; remove approvals.webhook",
                ));
            }
        }
        if !self.metrics.listen.trim().is_empty() {
            match self.metrics.addr() {
                Some(a) if a.ip().is_loopback() => {}
                Some(_) => {
                    return Err(bad(
                        "metrics.listen",
                        "must be a loopback address (the metrics name identities and connections)",
                    ));
                }
                None => {
                    return Err(bad(
                        "metrics.listen",
                        "not an address like \"127.0.0.1:9108\"",
                    ));
                }
            }
        }
        for (key, d) in [
            (
                "audit.checkpoint_every",
                Some(self.audit.checkpoint_interval()),
            ),
            ("audit.retain", self.audit.retention()),
        ] {
            if d.is_some_and(|d| d.is_zero()) {
                return Err(bad(key, "must be longer than 0"));
            }
        }
        if let Some(url) = &self.approvals.webhook
            && let Some(problem) = webhook_problem(url)
        {
            return Err(bad("approvals.webhook", &problem));
        }
        if self
            .proxy
            .listen
            .iter()
            .any(|a| a.port() == self.capture.listen_port && self.capture.enabled)
        {
            return Err(bad("proxy.listen", "must not use capture.listen_port"));
        }
        Ok(())
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.daemon.connect_timeout_ms)
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.daemon.handshake_timeout_ms)
    }

    pub fn control_socket(&self) -> PathBuf {
        self.daemon.runtime_dir.join("control.sock")
    }

    /// The resolvers jobs may use: configured, or those of /etc/resolv.conf.
    pub fn resolvers(&self) -> Vec<IpAddr> {
        if !self.capture.dns_resolvers.is_empty() {
            return self.capture.dns_resolvers.clone();
        }
        std::fs::read_to_string("/etc/resolv.conf")
            .map(|t| parse_resolv_conf(&t))
            .unwrap_or_default()
    }
}

/// What is wrong with a webhook URL, if anything: the payload names the
/// held request (URL, identity, body), so it goes over https, or in the
/// clear only to this host's own loopback.
fn webhook_problem(url: &str) -> Option<String> {
    let uri: http::Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => return Some(format!("is not a URL ({e})")),
    };
    let host = uri.host().unwrap_or_default();
    let ip = crate::addr::ip_literal(host);
    match uri.scheme_str() {
        _ if host.is_empty() => Some("has no host".into()),
        Some("https") => None,
        Some("http") if ip.is_some_and(|ip| ip.is_loopback()) => None,
        Some("http") => Some(format!(
            "is http:// to {host}, which is not a loopback address: use https:// (http:// is accepted only to 127.0.0.0/8 or [::1])"
        )),
        _ => Some("must be an https:// URL (or http:// to a loopback address)".into()),
    }
}

/// Deserialises a config; on error, also the dotted key it happened at.
fn located(text: &str) -> Result<Config, (toml::de::Error, Option<String>)> {
    let de = toml::Deserializer::parse(text).map_err(|e| (e, None))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        (e.into_inner(), (key != ".").then_some(key))
    })
}

// toml's errors carry no kind; a missing field is only told by its text.
fn is_missing_field(e: &toml::de::Error) -> bool {
    e.message().starts_with("missing field")
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

pub fn parse_resolv_conf(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next()).flatten()
        })
        // Strip an IPv6 zone (fe80::1%eth0); the kernel hook sees no zone.
        .filter_map(|a| a.split('%').next()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/hoop/test.toml"))
    }

    #[test]
    fn embedded_defaults_are_complete() {
        let c = Config::embedded();
        assert_eq!(c.capture.listen_port, 15001);
        assert_eq!(c.capture.cgroup, PathBuf::from("hoop.slice"));
        assert_eq!(c.control_socket(), PathBuf::from("/run/hoop/control.sock"));
    }

    /// The webhook payload names the held request: https, or http only
    /// to loopback, refused at load with the key and line.
    #[test]
    fn a_webhook_in_the_clear_goes_only_to_loopback() {
        for ok in [
            "https://hooks.example/x",
            "https://10.0.0.1:8443/hook",
            "http://127.0.0.1:9000/hook",
            "http://127.3.4.5/hook",
            "http://[::1]:9000/hook",
        ] {
            let c = parse(&format!("[approvals]\nwebhook = \"{ok}\"\n"));
            assert!(c.is_ok(), "{ok}: {c:?}");
        }
        for (bad, says) in [
            (
                "http://hooks.example/x",
                "not a loopback address: use https://",
            ),
            ("http://10.0.0.1/x", "not a loopback address"),
            ("http://localhost.example.com/x", "not a loopback address"),
            ("http://[::ffff:10.0.0.1]/x", "not a loopback address"),
            ("ftp://127.0.0.1/x", "must be an https:// URL"),
            ("hooks.example/x", "is not a URL"),
            ("/hook", "has no host"),
            ("https://", "is not a URL"),
        ] {
            let e = parse(&format!("\n[approvals]\nwebhook = \"{bad}\"\n"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("`approvals.webhook`") && e.contains(says) && e.contains("line 3"),
                "{bad}: {e}"
            );
        }
    }

    /// The console and Slack's buttons: what each needs, refused at load
    /// with the key.
    #[test]
    fn the_console_and_slack_say_what_they_lack() {
        let oidc = "[console.oidc]\nissuer = \"https://idp.example\"\nclient_id = \"c\"\n\
                    client_secret = { env = \"X\" }\nredirect_url = \"https://127.0.0.1:8443/callback\"\n";
        let console = format!("[console]\nlisten = \"127.0.0.1:8443\"\n{oidc}");
        let slack = |url: &str| {
            format!(
                "[approvals.slack]\nwebhook_url = \"{url}\"\nsigning_secret = {{ env = \"S\" }}\n"
            )
        };
        parse(&console).unwrap();
        parse(&format!(
            "{console}{}",
            slack("https://hooks.slack.example/x")
        ))
        .unwrap();
        parse("[approvals]\nslack = true\nwebhook = \"https://h.example/\"\n").unwrap();
        for (text, key, says) in [
            (
                "[console]\nlisten = \"127.0.0.1:8443\"\n".to_string(),
                "console.oidc",
                "needs an identity provider",
            ),
            (
                console.replace(
                    "https://127.0.0.1:8443/callback",
                    "http://127.0.0.1:8443/callback",
                ),
                "console.oidc.redirect_url",
                "https://HOST:PORT/callback",
            ),
            (
                console.replace("https://idp.example", "http://idp.example"),
                "console.oidc.issuer",
                "https://",
            ),
            (
                format!("[console]\nlisten = \"127.0.0.1:8443\"\nsession_ttl = \"2d\"\n{oidc}"),
                "console.session_ttl",
                "between 1m and 1d",
            ),
            (
                slack("https://hooks.slack.example/x"),
                "approvals.slack",
                "set [console] listen",
            ),
            (
                format!("{console}{}", slack("http://hooks.slack.example/x")),
                "approvals.slack.webhook_url",
                "not a loopback address",
            ),
            (
                format!(
                    "{console}[approvals]\nwebhook = \"https://h.example/\"\n{}",
                    slack("https://hooks.slack.example/x")
                ),
                "approvals.webhook",
                "remove approvals.webhook",
            ),
        ] {
            let e = parse(&text).unwrap_err().to_string();
            assert!(
                e.contains(&format!("`{key}`")) && e.contains(says),
                "{key}: {e}\n{text}"
            );
        }
    }

    /// The config `cargo xtask install` puts in /etc/hoop: valid as it
    /// is, and its example once uncommented.
    #[test]
    fn the_installed_starter_config_and_its_example_are_valid() {
        let text = include_str!("../../../systemd/hoop.toml");
        parse(text).unwrap();
        let example: String = text
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.starts_with('[') || l.contains(" = "))
            .map(|l| format!("{l}\n"))
            .collect();
        let c = parse(&example).unwrap_or_else(|e| panic!("{e}\n{example}"));
        assert_eq!(c.connections.len(), 1);
        assert_eq!(c.identity.statics.len(), 1);
    }

    #[test]
    fn a_file_overrides_only_what_it_names() {
        let c = parse("[capture]\nlisten_port = 16000\n").unwrap();
        assert_eq!(c.capture.listen_port, 16000);
        assert_eq!(c.capture.bpf_pin_dir, PathBuf::from("/sys/fs/bpf/hoop"));
    }

    #[test]
    fn unknown_keys_name_file_line_and_key() {
        let e = parse("[capture]\nlisten_port = 16000\nlisten_prot = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/etc/hoop/test.toml"), "{e}");
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("listen_prot"), "{e}");
    }

    #[test]
    fn wrong_types_and_syntax_errors_are_located() {
        let e = parse("[capture]\nlisten_port = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("test.toml"), "{e}");
        let e = parse("[capture\n").unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let e = parse("[capture]\ncgroup = \"../escape\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("capture.cgroup"), "{e}");
        let e = parse("[capture]\nlisten_port = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("capture.listen_port"), "{e}");
        for (key, v) in [("listen4", "\"10.0.0.1\""), ("listen6", "\"::\"")] {
            let e = parse(&format!("[capture]\n{key} = {v}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("capture.{key}")) && e.contains("loopback"),
                "{e}"
            );
        }
        parse("[capture]\nlisten4 = \"127.0.0.3\"\n").unwrap();
    }

    #[test]
    fn limits_refuse_nonsense() {
        let c = Config::embedded();
        assert_eq!(c.limits.max_connections_per_job, 256);
        assert_eq!(c.limits.max_connections, 16384);
        assert_eq!(c.limits.idle_timeout(), Duration::from_secs(60));
        for (text, key) in [
            (
                "[limits]\nmax_connections_per_job = 0\n",
                "limits.max_connections_per_job",
            ),
            ("[limits]\nmax_connections = 10\n", "limits.max_connections"),
            ("[limits]\nidle_timeout_ms = 0\n", "limits.idle_timeout_ms"),
            (
                "[limits]\nheader_read_timeout_ms = 0\n",
                "limits.header_read_timeout_ms",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("line 2"), "{text}: {e}");
        }
        let e = parse("[limits]\nmax_connections = -1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_connections"), "{e}");
        let c = parse("[limits]\nmax_connections_per_job = 2\nmax_connections = 2\n").unwrap();
        assert_eq!(c.limits.max_connections, 2);
    }

    #[test]
    fn resolv_conf_parsing() {
        let r =
            parse_resolv_conf("# c\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\nsearch x\n");
        assert_eq!(
            r,
            vec![
                "127.0.0.53".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
    }
}
