//! The Kubernetes registry and helpers against the in-repo fake apiserver
//! (`istiod_compat::k8s::fake`), driven by the real `kube::Client`.
//!
//! No sleeps: every wait is on a `watch` receiver (published snapshots, or the fake's own
//! change signal) bounded by `support::PATIENCE`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a test failure"
)]

mod k8s {
    mod auth;
    mod ca;
    mod registry;
    mod root_configmap;
    mod support;
}
