//! CNI plugin binary (skeleton).

fn main() {}
