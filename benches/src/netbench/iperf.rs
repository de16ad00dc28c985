//! iperf3 for the bulk-throughput phase: a server process in a pod and JSON client runs.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::Value;
use ztunnel::test_helpers::netns::Pod;

use super::wait_listening;

/// Seconds iperf3 leaves out at the start of each run (TCP slow start).
const OMIT_SECONDS: u64 = 1;

/// `iperf3 -s` running in a pod; killed on drop.
pub struct IperfServer {
    child: Child,
}

impl IperfServer {
    /// Starts `iperf3 -s -p <port>` in `pod` and waits until it listens.
    pub fn start(pod: &Pod, port: u16) -> anyhow::Result<IperfServer> {
        let child = Command::new("nsenter")
            .arg(format!("--net={}", pod.netns_path().display()))
            .args(["--", "iperf3", "-s", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 -s (is iperf3 installed? apt-get install iperf3)")?;
        let server = IperfServer { child };
        wait_listening(pod, port)?;
        Ok(server)
    }
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One iperf3 client run.
#[derive(Debug, Clone, Serialize)]
pub struct IperfResult {
    /// Parallel connections (`-P`).
    pub streams: u32,
    /// Measured seconds (after the omitted start).
    pub seconds: f64,
    /// What the receiver got, bits per second.
    pub received_bps: f64,
    /// What the sender sent, bits per second.
    pub sent_bps: f64,
    /// TCP retransmissions of the sender.
    pub retransmits: Option<u64>,
}

impl IperfResult {
    /// Received throughput in Gbit/s.
    pub fn gbps(&self) -> f64 {
        self.received_bps / 1e9
    }
}

/// Runs `iperf3 -c <server> -P <streams> -t <duration> -O 1 -J` in `pod`.
pub fn run_client(
    pod: &Pod,
    server: SocketAddr,
    streams: u32,
    duration: Duration,
) -> anyhow::Result<IperfResult> {
    let args = [
        "iperf3".to_owned(),
        "-c".to_owned(),
        server.ip().to_string(),
        "-p".to_owned(),
        server.port().to_string(),
        "-P".to_owned(),
        streams.to_string(),
        "-t".to_owned(),
        duration.as_secs().max(1).to_string(),
        "-O".to_owned(),
        OMIT_SECONDS.to_string(),
        "-J".to_owned(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = pod.exec(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    let json: Value = serde_json::from_str(&text).with_context(|| {
        format!(
            "iperf3 output is not JSON ({}): {}{}",
            out.status,
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    if let Some(error) = json.get("error").and_then(Value::as_str) {
        bail!("iperf3 -c {server} -P {streams}: {error}");
    }
    let sum = |name: &str| json.pointer(&format!("/end/{name}")).cloned();
    let (Some(sent), Some(received)) = (sum("sum_sent"), sum("sum_received")) else {
        bail!("iperf3 JSON has no end.sum_sent / end.sum_received: {text}");
    };
    let number = |v: &Value, key: &str| v.get(key).and_then(Value::as_f64);
    Ok(IperfResult {
        streams,
        seconds: number(&received, "seconds").unwrap_or(duration.as_secs_f64()),
        received_bps: number(&received, "bits_per_second")
            .context("iperf3 JSON: no end.sum_received.bits_per_second")?,
        sent_bps: number(&sent, "bits_per_second").unwrap_or_default(),
        retransmits: sent.get("retransmits").and_then(Value::as_u64),
    })
}
