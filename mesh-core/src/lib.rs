//! Types shared by every binary of the mesh.
//!
//! Nothing here does I/O: these are the vocabulary types that the node proxy
//! (`ztunnel`) and the control plane (`istiod-compat`) both speak.
#![deny(missing_docs)]

mod duration;
mod identity;
mod names;

pub use duration::parse_duration;
pub use identity::{Identity, IdentityParseError};
pub use names::{NameParseError, NamespacedHostname, NetworkAddress};
