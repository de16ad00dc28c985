//! The data path: listeners, outbound, inbound, HBONE and the connection pool.

pub mod hbone;
pub mod pool;
