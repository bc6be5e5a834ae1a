//! The tamper-evident audit log (issue 6). So far: the hash chain and
//! signed checkpoints, as pure functions with their tamper tests. The
//! SQLite store, the writer thread and `hoop audit verify` come next.
pub mod chain;
