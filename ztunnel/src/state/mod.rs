//! The proxy's view of the mesh: workloads, services and authorization policies.
//!
//! One writer (the local-config watcher, later the xDS client) builds a complete new
//! [`ProxyState`] off-lock and swaps it into the [`StateStore`]; the data path only ever
//! reads an immutable snapshot (`Arc<ProxyState>`), so it never waits on the writer.

mod lookup;
mod policy;
mod service;
mod store;
mod workload;

pub use lookup::*;
pub use policy::*;
pub use service::*;
pub use store::*;
pub use workload::*;
