//! `[audit]`: the shape the audit service is started from.
use std::time::Duration;

use serde::Deserialize;

/// How hard a commit waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sync {
    /// fsync at every (group) commit: survives power loss.
    Full,
    /// The WAL is written at commit and synced at checkpoints: survives the
    /// daemon being killed, not the machine losing power.
    Normal,
}

/// `[audit]` in the config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Off: nothing is recorded (benchmarks, hosts that must not keep
    /// records). On is the default.
    pub enabled: bool,
    /// `full` (fsync per group commit) or `normal`.
    pub sync: Sync,
    /// How often the head's signature is kept as a checkpoint and its hash
    /// logged (also at stop). Every commit signs its head regardless.
    pub checkpoint_every: super::duration::Human,
    /// Records older than this are pruned ("30d"); empty keeps everything.
    #[serde(deserialize_with = "super::duration::optional")]
    pub retain: Option<super::duration::Human>,
    /// Cap on the database's size in bytes (0: none). When it is full,
    /// requests fail closed (503) until retention or an operator frees room.
    pub max_db_bytes: u64,
}

impl AuditConfig {
    pub fn checkpoint_interval(&self) -> Duration {
        self.checkpoint_every.into()
    }
    pub fn retention(&self) -> Option<Duration> {
        self.retain.map(Duration::from)
    }
}
