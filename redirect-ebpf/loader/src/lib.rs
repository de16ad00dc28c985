//! aya loader for the redirect eBPF programs (skeleton).
