//! Approval rules as policy compiles them: who may approve (`uid:N`,
//! `user:NAME`, `group:NAME`, resolved through the user database) and how
//! long a held request waits. The approval service holds and decides.
use std::time::Duration;

/// Who may approve: `uid:N`, `user:NAME` or `group:NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approver {
    Uid(u32),
    User(String),
    Group(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?}: use uid:N, user:NAME or group:NAME")]
pub struct BadApprover(String);

impl Approver {
    pub fn parse(s: &str) -> Result<Self, BadApprover> {
        let bad = || BadApprover(s.into());
        let (kind, v) = s.split_once(':').ok_or_else(bad)?;
        match kind {
            "uid" => v.parse().map(Self::Uid).map_err(|_| bad()),
            "user" if !v.is_empty() => Ok(Self::User(v.into())),
            "group" if !v.is_empty() => Ok(Self::Group(v.into())),
            _ => Err(bad()),
        }
    }

    pub fn admits(&self, c: &Caller) -> bool {
        match self {
            Self::Uid(u) => c.uid == *u,
            Self::User(name) => {
                crate::users::Account::by_name(name).is_some_and(|a| a.uid == c.uid)
            }
            Self::Group(name) => crate::users::group_id(name).is_some_and(|g| c.gids.contains(&g)),
        }
    }
}

/// An approval rule, compiled (its matcher lives with the connection).
#[derive(Debug)]
pub struct ApprovalRule {
    pub name: String,
    pub approvers: Vec<Approver>,
    pub timeout: Duration,
}

/// Who asked: the uid from SO_PEERCRED, the groups from the user
/// database for that uid.
#[derive(Debug, Clone)]
pub struct Caller {
    pub uid: u32,
    pub gids: Vec<u32>,
}

impl Caller {
    pub fn label(&self) -> String {
        match crate::users::user_name(self.uid) {
            Some(n) => format!("uid:{} ({n})", self.uid),
            None => format!("uid:{}", self.uid),
        }
    }
}
