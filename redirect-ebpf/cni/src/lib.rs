//! CNI plugin library (skeleton).
