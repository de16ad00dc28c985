//! `istiod-compat`: the control plane for ambient node proxies.
//!
//! Registries ([`k8s`], [`files`]) produce [`model::Snapshot`]s of Kubernetes objects;
//! [`translate`] turns a snapshot into xDS resources; [`xds`] serves them over delta ADS and
//! [`ca`] signs workload certificates.

pub mod app;
pub mod ca;
pub mod config;
pub mod crd;
pub mod files;
pub mod k8s;
pub mod model;
pub mod translate;
pub mod xds;
