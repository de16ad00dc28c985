//! rustls configuration for HBONE: TLS 1.3 only, mesh roots, SPIFFE SAN checks.
