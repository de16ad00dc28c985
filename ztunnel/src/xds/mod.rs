//! The xDS client: delta ADS to istiod (or `istiod-compat`) for the two ambient types,
//! `istio.workload.Address` and `istio.security.Authorization` (reference §9).
//!
//! - [`convert`]: proto → `state` types, fallibly, one resource at a time. Proto types never
//!   leave this module.
//! - `resources`: the resources received, keyed by name, with their versions and the names
//!   NACKed; builds a complete [`crate::state::ProxyState`].
//! - [`XdsClient`]: the stream, ACK/NACK, reconnect with backoff, readiness.
//!
//! The client is the single writer of the [`crate::state::StateStore`] while xDS is on: after
//! each response it converts the changed resources (off-lock, on its own task), builds a
//! whole new snapshot and swaps it in. When `LOCAL_XDS_PATH` is also set, the file's
//! resources are merged in (see [`XdsClient::with_local`]).

mod client;
pub mod convert;
mod resources;

pub use client::{MAX_DECODING_MESSAGE_SIZE, XdsClient};
pub use convert::{AddressResource, ConvertError, address_from_bytes, authorization_from_bytes};
