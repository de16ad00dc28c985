//! `ztunnel`: an Istio-ambient-compatible node proxy.
//!
//! See `ARCHITECTURE.md` at the repository root for the data flow of one connection.

pub mod admin;
pub mod app;
pub mod config;
pub mod control;
pub mod drain;
pub mod http_server;
pub mod identity;
pub mod inpod;
pub mod localconfig;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod rbac;
pub mod readiness;
pub mod socket;
pub mod state;
pub mod tls;
pub mod xds;

#[cfg(feature = "testing")]
pub mod test_helpers;
