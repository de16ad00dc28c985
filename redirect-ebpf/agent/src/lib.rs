//! Node agent library (skeleton).
