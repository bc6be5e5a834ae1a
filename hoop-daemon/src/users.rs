//! The user database, through NSS (so LDAP and sssd accounts work the same
//! as local ones): who a uid is, which groups an account is in. hoop never
//! parses /etc/passwd or /etc/group itself, and never takes a process's
//! groups from /proc: a pid can be reused, an account can't.
use std::{ffi::CString, path::PathBuf};

use nix::unistd::{Gid, Group, Uid, User, getgrouplist};

/// An account as the user database has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl Account {
    /// By name, or by number (`65534`) for accounts a caller names so.
    pub fn by_name(name: &str) -> Option<Self> {
        let user = match name.parse::<u32>() {
            Ok(uid) => User::from_uid(Uid::from_raw(uid)).ok()??,
            Err(_) => User::from_name(name).ok()??,
        };
        Some(Self::of(user))
    }

    pub fn by_uid(uid: u32) -> Option<Self> {
        User::from_uid(Uid::from_raw(uid)).ok()?.map(Self::of)
    }

    fn of(u: User) -> Self {
        Self {
            name: u.name,
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
            home: u.dir,
        }
    }

    /// Every group the account is in: its primary group and its
    /// supplementary groups.
    pub fn groups(&self) -> Vec<u32> {
        let Ok(name) = CString::new(self.name.as_bytes()) else {
            return vec![self.gid];
        };
        match getgrouplist(&name, Gid::from_raw(self.gid)) {
            Ok(g) => g.into_iter().map(Gid::as_raw).collect(),
            Err(_) => vec![self.gid],
        }
    }
}

/// The groups of the account with this uid (its primary group included);
/// empty for a uid the database doesn't know.
pub fn groups_of_uid(uid: u32) -> Vec<u32> {
    Account::by_uid(uid).map(|a| a.groups()).unwrap_or_default()
}

/// A group's id by name.
pub fn group_id(name: &str) -> Option<u32> {
    Group::from_name(name).ok()?.map(|g| g.gid.as_raw())
}

/// A user's name, for labels.
pub fn user_name(uid: u32) -> Option<String> {
    Account::by_uid(uid).map(|a| a.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_nobody_come_from_the_user_database() {
        let root = Account::by_name("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(root.groups().contains(&0));
        assert_eq!(Account::by_name("0"), Some(root));
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert_eq!(group_id("root"), Some(0));
        assert_eq!(group_id("no-such-group-hoop-test"), None);
        assert_eq!(Account::by_name("no-such-user-hoop-test"), None);
        let nobody = Account::by_name("nobody").unwrap();
        assert_eq!(nobody.uid, 65534);
        assert!(!nobody.groups().contains(&0));
        assert_eq!(groups_of_uid(4_000_000_000), Vec::<u32>::new());
    }
}
