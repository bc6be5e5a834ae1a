//! `hoop run`: the daemon moves this very process into a new job cgroup,
//! then it becomes CMD, sandboxed. The job's exit code is CMD's, with
//! nothing in between. Unless told not to, CMD finds hoop's CA where the
//! common runtimes look (their CA variables, pointed at the job's bundle).
use std::{
    os::unix::process::CommandExt,
    process::{Command, ExitCode},
};

use anyhow::{Context, Result, bail};

use super::{request, sandbox};
use crate::{
    config::Config,
    control::{Request, Response},
    users::Account,
};

/// The variables the common runtimes read a CA bundle from: OpenSSL (and
/// curl, Python's ssl, Go, rustls-native-certs), Node, requests, curl, git,
/// Deno, the AWS SDKs. Each is pointed at the job's bundle, which holds
/// what the caller's pointed at.
const CA_VARS: [&str; 7] = [
    "SSL_CERT_FILE",
    "NODE_EXTRA_CA_CERTS",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "DENO_CERT",
    "AWS_CA_BUNDLE",
];

/// Where `--nss` puts hoop's CA for the job's browsers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Nss {
    /// The job user's own database, `~/.pki/nssdb` (as that user).
    Home,
    /// A database of the job's own, under HOME set to the job's directory.
    Private,
}

/// What the job is to trust: `env`, the runtimes' CA variables; `nss`, a
/// browser database.
pub struct Trust {
    pub env: bool,
    pub nss: Option<Nss>,
}

/// The token variable is not passed on: CMD has no use for it.
pub fn run(
    cfg: &Config,
    token: Option<String>,
    token_env: Option<&str>,
    user: Option<&str>,
    want: Trust,
    observe: bool,
    command: Vec<String>,
) -> Result<ExitCode> {
    let trust_env = want.env;
    if want.nss == Some(Nss::Private) && !trust_env {
        bail!(
            "--nss=private keeps its database in the job's directory, which --no-trust-env turns off"
        );
    }
    // Everything that can fail does so before the job exists.
    let account = match user {
        Some(u) => Some(
            Account::by_name(u)
                .with_context(|| format!("--user {u}: no such account in the user database"))?,
        ),
        None => None,
    };
    if account.is_some() && !nix::unistd::geteuid().is_root() {
        bail!("--user needs root: only root can run a job as another account");
    }
    let filter = sandbox::filter().context("building the job's seccomp filter")?;
    // Who the job runs as: the account asked for, else the caller (who
    // may have no entry in the user database; only --nss needs one).
    let (uid, gid) = match &account {
        Some(a) => (a.uid, a.gid),
        None => (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        ),
    };
    let job_user = match (&account, want.nss) {
        (Some(a), _) => Some(a.clone()),
        (None, Some(_)) => Some(
            Account::by_uid(uid).context("--nss: the calling user is not in the user database")?,
        ),
        (None, None) => None,
    };
    let trust = trust_env.then(|| crate::control::TrustAsk {
        uid,
        gid,
        extra_pem: callers_bundles(),
    });
    let resp = request(
        cfg,
        &Request::Run {
            token,
            command: command.clone(),
            trust,
            observe,
        },
    )?;
    let Response::Run { trust, .. } = resp else {
        bail!("unexpected answer: {resp:?}")
    };
    let mut cmd = Command::new(&command[0]);
    cmd.args(&command[1..]);
    match &trust {
        Some(t) => point_at(&mut cmd, t),
        None if trust_env => {
            eprintln!(
                "hoop: the job's CA bundle could not be prepared (see the daemon's log); CMD keeps its own trust"
            )
        }
        None => {}
    }
    let mut private_home: Option<std::path::PathBuf> = None;
    match (want.nss, &job_user) {
        (Some(Nss::Home), Some(job_user)) => {
            let db = job_user.home.join(".pki/nssdb");
            super::ca::install_as(job_user, &db, &super::ca::read_pem(cfg)?)
                .with_context(|| format!("--nss: adding hoop's CA to {}", db.display()))?;
        }
        (Some(Nss::Private), Some(job_user)) => {
            let bundle = trust.as_ref().map(|t| std::path::PathBuf::from(&t.bundle));
            let Some(dir) = bundle.as_deref().and_then(std::path::Path::parent) else {
                bail!(
                    "--nss=private: the job's directory could not be prepared (see the daemon's log)"
                );
            };
            let home = dir.join("home");
            super::ca::install_as(
                job_user,
                &home.join(".pki/nssdb"),
                &super::ca::read_pem(cfg)?,
            )
            .context("--nss=private: making the job's NSS database")?;
            private_home = Some(home);
        }
        _ => {}
    }
    if let Some(v) = token_env {
        cmd.env_remove(v);
    }
    if let Some(a) = &account {
        sandbox::become_user(a, &mut cmd)?;
    }
    // After the account's own HOME: Chromium reads $HOME/.pki/nssdb.
    if let Some(home) = &private_home {
        cmd.env("HOME", home);
    }
    filter.load().context("loading the job's seccomp filter")?;
    let err = cmd.exec();
    eprintln!("hoop: cannot run {}: {err}", command[0]);
    Ok(ExitCode::from(
        if err.kind() == std::io::ErrorKind::NotFound {
            127
        } else {
            126
        },
    ))
}

/// Points the runtimes' CA variables at the job's bundle, and Java at its
/// truststore unless the caller chose one.
fn point_at(cmd: &mut Command, t: &crate::control::TrustGiven) {
    for v in CA_VARS {
        cmd.env(v, &t.bundle);
    }
    let Some(store) = &t.java_truststore else {
        return;
    };
    let opts = std::env::var("JAVA_TOOL_OPTIONS").unwrap_or_default();
    if opts.contains("javax.net.ssl.trustStore=") {
        eprintln!(
            "hoop: JAVA_TOOL_OPTIONS already names a trustStore; kept (add hoop's CA to it: hoop ca export)"
        );
        return;
    }
    let ours = format!(
        "-Djavax.net.ssl.trustStore={store} -Djavax.net.ssl.trustStoreType=PKCS12 -Djavax.net.ssl.trustStorePassword={}",
        crate::trust::JAVA_STORE_PASSWORD
    );
    cmd.env("JAVA_TOOL_OPTIONS", format!("{opts} {ours}").trim());
}

/// The certificates of the bundles the caller's CA variables name (read
/// as the caller), to be kept beside hoop's: the job's bundle replaces
/// the files, not what they trusted. Unreadable, not certificates, or the
/// system bundle (already in): skipped.
fn callers_bundles() -> String {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut seen = std::collections::HashSet::new();
    let mut out = String::new();
    for v in CA_VARS {
        let Some(path) = std::env::var_os(v) else {
            continue;
        };
        let path = std::fs::canonicalize(&path).unwrap_or_else(|_| path.into());
        if path == std::path::Path::new(crate::trust::SYSTEM_BUNDLE) || !seen.insert(path.clone()) {
            continue;
        }
        let certs: Vec<CertificateDer<'static>> =
            match CertificateDer::pem_file_iter(&path).and_then(|i| i.collect::<Result<_, _>>()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!(
                        "hoop: {v}={}: {e}; not kept in the job's bundle",
                        path.display()
                    );
                    continue;
                }
            };
        let text = crate::trust::pem(certs.iter().map(|c| c.as_ref()));
        if out.len() + text.len() <= crate::trust::MAX_EXTRA_PEM {
            out.push_str(&text);
        }
    }
    out
}
