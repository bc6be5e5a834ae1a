//! Policy against the record: what a candidate policy would make of the
//! recorded requests (`hoop policy test`), and the least-privilege policy
//! the record of observed jobs proposes (`hoop policy suggest`). Reads
//! records, sends nothing.
pub mod dryrun;
pub mod suggest;
