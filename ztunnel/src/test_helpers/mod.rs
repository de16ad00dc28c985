//! Test helpers (feature `testing`): never part of a production build.

pub mod inprocess;
pub mod netns;
