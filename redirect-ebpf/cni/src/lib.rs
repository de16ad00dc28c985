//! The chained CNI plugin (`mesh-cni`): reports pod sandbox ADD/DEL to the node agent and
//! passes the previous plugin's result through unchanged (CNI spec 1.0.0).
//!
//! - [`event`]: the one-line JSON exchange with the agent (shared with `redirect-agent`).
//! - [`conf`]: the CNI environment (`CNI_*`) and the stdin network configuration.
//! - [`plugin`]: ADD / DEL / CHECK / VERSION.
//! - [`chain`]: `mesh-cni install` / `uninstall` (chaining into the node's CNI config).

#![deny(missing_docs)]

pub mod chain;
pub mod conf;
pub mod event;
pub mod plugin;
