//! CNI plugin library: the chained plugin (ADD/DEL/CHECK/VERSION) and installation.

pub mod chain;
