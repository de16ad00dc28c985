//! The control plane's gRPC servers between real tasks over 127.0.0.1 (port 0), driven by
//! tonic clients generated from `xds-proto`: delta ADS (`xds`), the Istio CA (`ca`), and the
//! whole app with its TLS port and monitoring (`app`).
//!
//! No sleeps: every wait is on a response or a `watch`, bounded by `support::PATIENCE`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a test failure"
)]

mod control_plane {
    mod app;
    mod ca;
    mod support;
    mod xds;
}
