//! Fuzz targets for every parser ztunnel runs on untrusted input, as plain functions.
//!
//! Each function takes arbitrary bytes and must never panic: a panic is either a bug in the
//! parser (it crashed on hostile input) or a broken invariant checked here (a round trip that
//! does not round-trip, a resolved target on a forbidden port, ...).
//!
//! Two drivers call them:
//! - `fuzz/` (cargo-fuzz, its own workspace): one `fuzz_target!` per function, libFuzzer + ASan;
//! - `tests/replay.rs` (`cargo test -p fuzz-targets`, stable): every file of
//!   `fuzz/corpus/<target>/` through its function, so the targets keep compiling and every
//!   seed (including minimized crash reproducers) keeps passing in the normal test command.
//!
//! | target | trust boundary |
//! |---|---|
//! | [`cni_conf`] | the CNI plugin's stdin network configuration and `CNI_ARGS` (container runtime) |
//! | [`cni_event`] | one request line on the node agent's CNI event socket |
//! | [`csr`] | certificate signing requests from any caller of the CA (istiod-compat) |
//! | [`hbone_authority`] | CONNECT `:authority` from any mesh peer |
//! | [`hbone_headers`] | `baggage`, `forwarded`, `traceparent` on CONNECT requests and responses |
//! | [`hbone_request`] | a whole CONNECT request through the inbound validation before policy |
//! | [`local_config`] | the `LOCAL_XDS_PATH` YAML file, then lookups on the state it builds |
//! | [`peer_certificate`] | the peer's leaf certificate (mTLS) and SPIFFE identity strings |
//! | [`xds_resource`] | xDS `Address` / `Authorization` resources from the control plane |
//! | [`zds_agent_response`] | ztunnel's datagrams to the node agent over ZDS (hello, acks) |
//! | [`zds_request`] | the node agent's datagrams to ztunnel over ZDS (add, keep, del, snapshot) |

mod cni;
mod csr;
mod hbone;
mod local_config;
mod peer_certificate;
mod xds;
mod zds;

pub use cni::{cni_conf, cni_event, zds_agent_response};
pub use csr::csr;
pub use hbone::{hbone_authority, hbone_headers, hbone_request};
pub use local_config::local_config;
pub use peer_certificate::peer_certificate;
pub use xds::xds_resource;
pub use zds::zds_request;

/// A fuzz target: takes any bytes and never panics.
pub type Target = fn(&[u8]);

/// Every target by name: the name is the `fuzz/fuzz_targets/<name>.rs` binary and the
/// `fuzz/corpus/<name>/` seed directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("cni_conf", cni_conf),
    ("cni_event", cni_event),
    ("csr", csr),
    ("hbone_authority", hbone_authority),
    ("hbone_headers", hbone_headers),
    ("hbone_request", hbone_request),
    ("local_config", local_config),
    ("peer_certificate", peer_certificate),
    ("xds_resource", xds_resource),
    ("zds_agent_response", zds_agent_response),
    ("zds_request", zds_request),
];
