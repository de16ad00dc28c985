//! The node agent (`redirect-agent`): enrolls this node's ambient pods into traffic
//! redirection (eBPF, or nftables as the fallback), hands their network namespaces to the
//! node proxy over ZDS, and learns about pod sandboxes from the chained CNI plugin.
//!
//! - [`config`]: typed env config ([`config::ENV_NAMES`]).
//! - [`state`]: pods reported by CNI, persisted in the state dir.
//! - [`source`]: which pods are enrolled (files registry or Kubernetes).
//! - [`reconcile`]: the loop bringing pods to the desired state.
//! - [`redirect`]: the redirection backends and in-pod routing.
//! - [`zds`]: the ZDS server.
//! - [`cni_server`], [`readiness`] (with [`metrics`] on `/metrics`), [`logging`],
//!   [`netns`]; [`app`] wires them.

#![deny(missing_docs)]

pub mod app;
pub mod cni_server;
pub mod config;
pub mod logging;
pub mod metrics;
pub mod netns;
pub mod readiness;
pub mod reconcile;
pub mod redirect;
pub mod source;
pub mod state;
pub mod zds;
