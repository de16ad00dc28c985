//! The HBONE connection pool.
