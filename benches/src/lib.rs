//! `mesh-benches`: inputs for the criterion micro-benchmarks (`benches/*.rs`) and the
//! network-namespace harness behind the `netbench` binary. See `benches/README.md`.
//!
//! Nothing here asserts a timing: benchmarks report numbers, they never pass or fail on them.

pub mod duplex;
pub mod fixtures;
pub mod netbench;
