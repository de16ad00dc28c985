//! Map keys and values shared by the kernel programs and the loader (skeleton).
