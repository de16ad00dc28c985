//! ZDS message encoding (xds-proto's `istio.workload.zds` types stay in this module).

use prost::Message;
use xds_proto::workload::zds::{
    Ack, AddWorkload, DelWorkload, KeepWorkload, SnapshotSent, Version, WorkloadRequest,
    WorkloadResponse, ZdsHello, workload_request, workload_response,
};

pub use xds_proto::workload::zds::WorkloadInfo;

use super::ZdsPod;

fn request(payload: workload_request::Payload) -> Vec<u8> {
    WorkloadRequest {
        payload: Some(payload),
    }
    .encode_to_vec()
}

pub(super) fn add(pod: &ZdsPod) -> Vec<u8> {
    request(workload_request::Payload::Add(AddWorkload {
        uid: pod.uid.clone(),
        workload_info: Some(pod.info.clone()),
    }))
}

pub(super) fn keep(uid: &str) -> Vec<u8> {
    request(workload_request::Payload::Keep(KeepWorkload {
        uid: uid.to_string(),
    }))
}

pub(super) fn del(uid: &str) -> Vec<u8> {
    request(workload_request::Payload::Del(DelWorkload {
        uid: uid.to_string(),
    }))
}

pub(super) fn snapshot_sent() -> Vec<u8> {
    request(workload_request::Payload::SnapshotSent(SnapshotSent {}))
}

/// Decodes ztunnel's first datagram: `Ok` for `ZdsHello{V1}`, else why not.
pub fn decode_hello(b: &[u8]) -> Result<(), String> {
    let hello = ZdsHello::decode(b).map_err(|e| format!("undecodable ZdsHello: {e}"))?;
    if hello.version == Version::V1 as i32 {
        Ok(())
    } else {
        Err(format!("unsupported ZDS version {}", hello.version))
    }
}

/// Decodes ztunnel's answer to a request: `Ok(Ok(()))` ack, `Ok(Err(text))` nack, `Err`
/// not an ack at all.
pub fn decode_ack(b: &[u8]) -> Result<Result<(), String>, String> {
    let resp = WorkloadResponse::decode(b).map_err(|e| format!("undecodable response: {e}"))?;
    match resp.payload {
        Some(workload_response::Payload::Ack(Ack { error })) if error.is_empty() => Ok(Ok(())),
        Some(workload_response::Payload::Ack(Ack { error })) => Ok(Err(error)),
        None => Err("response without an ack".into()),
    }
}

/// Encodes `Ack{error}` (the ztunnel side; for tests and tools).
pub fn encode_ack(error: &str) -> Vec<u8> {
    WorkloadResponse {
        payload: Some(workload_response::Payload::Ack(Ack {
            error: error.to_string(),
        })),
    }
    .encode_to_vec()
}

/// Decodes a request (the ztunnel side; for tests and tools).
pub fn decode_request(b: &[u8]) -> Result<workload_request::Payload, String> {
    WorkloadRequest::decode(b)
        .map_err(|e| e.to_string())?
        .payload
        .ok_or_else(|| "request without payload".to_string())
}
