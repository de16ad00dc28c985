//! Node agent binary (skeleton).

fn main() {}
