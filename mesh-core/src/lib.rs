//! Types shared by every binary of the mesh.
//!
//! Nothing here does I/O beyond reading environment variables: these are the vocabulary types that the node proxy
//! (`ztunnel`) and the control plane (`istiod-compat`) both speak, and [`env`], the
//! configuration-parsing layer every binary's typed `Config` is built on.
#![deny(missing_docs)]

mod duration;
pub mod env;
mod identity;
mod names;

pub use duration::parse_duration;
pub use identity::{Identity, IdentityParseError};
pub use names::{NameParseError, NamespacedHostname, NetworkAddress};
