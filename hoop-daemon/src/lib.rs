//! hoop: a transparent, eBPF-enforced access gateway for automation jobs.
//!
//! The data path reads top-down: `capture` (kernel programs, cgroups) →
//! `accept` (listeners, one `Flow` per connection) → upstream. `control`
//! serves the CLI over a Unix socket; `jobs` is the registry tying cgroups to
//! identities.
#![deny(unsafe_code)]

pub mod accept;
pub mod addr;
pub mod approval;
pub mod audit;
pub mod capture;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod console;
pub mod control;
pub mod daemon;
pub mod egress;
pub mod fleet;
pub mod flow;
pub mod identity;
pub mod jobs;
pub mod logging;
pub mod metrics;
pub mod outbound;
pub mod path_error;
pub mod pipeline;
pub mod policy;
pub mod proxy;
pub mod review;
pub mod sys;
pub mod tls;
pub mod trust;
pub mod users;
