//! Real parts for hoop's tests and benchmarks: a test CA that issues server
//! certificates, and an HTTPS (or plain) origin speaking h1 and h2 with the
//! routes the suites need. Everything listens on loopback only.
mod ca;
mod origin;

pub use ca::TestCa;
pub use origin::{Origin, OriginOpts};
