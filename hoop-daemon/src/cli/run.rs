//! `hoop run`: the daemon moves this very process into a new job cgroup,
//! then it becomes CMD, sandboxed. The job's exit code is CMD's, with
//! nothing in between.
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

/// The token variable is not passed on: CMD has no use for it.
pub fn run(
    cfg: &Config,
    token: Option<String>,
    token_env: Option<&str>,
    user: Option<&str>,
    command: Vec<String>,
) -> Result<ExitCode> {
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
    let resp = request(
        cfg,
        &Request::Run {
            token,
            command: command.clone(),
        },
    )?;
    let Response::Run { .. } = resp else {
        bail!("unexpected answer: {resp:?}")
    };
    let mut cmd = Command::new(&command[0]);
    cmd.args(&command[1..]);
    if let Some(v) = token_env {
        cmd.env_remove(v);
    }
    if let Some(a) = &account {
        sandbox::become_user(a, &mut cmd)?;
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
