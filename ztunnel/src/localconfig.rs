//! `LOCAL_XDS_PATH`: Istio ztunnel's local YAML config (workloads, services, policies).
