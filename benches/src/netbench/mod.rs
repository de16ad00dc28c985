//! Pieces of the two-node network-namespace harness (`netbench` binary): the traffic
//! generators and servers, the iperf3 driver, statistics, the report and its chart. The
//! binary (`src/bin/netbench.rs`) builds the topology with `ztunnel::test_helpers::netns`
//! and runs the phases in order.

pub mod chart;
pub mod iperf;
pub mod report;
pub mod stats;
pub mod traffic;

use std::sync::atomic::{AtomicBool, Ordering};

use ztunnel::test_helpers::netns::{PATIENCE, Pod, eventually};

static STOP: AtomicBool = AtomicBool::new(false);

/// Asks every running phase to stop at its next iteration (SIGINT/SIGTERM).
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

/// Whether a stop was requested; loops check this so a signal ends the run cleanly (the
/// topology and processes are then removed by their destructors).
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Resident set size of process `pid` in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> std::io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no VmRSS in /proc/{pid}/status")))
}

/// The parts of `pid`'s RSS in KiB: `[RssAnon, RssFile, RssShmem]` from
/// `/proc/<pid>/status` (heap and stacks; mapped code and libraries; shared memory).
pub fn rss_parts_kib(pid: u32) -> std::io::Result<[u64; 3]> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("no {name} in /proc/{pid}/status")))
    };
    Ok([field("RssAnon:")?, field("RssFile:")?, field("RssShmem:")?])
}

/// The process name of `pid` (`/proc/<pid>/comm`).
pub fn process_name(pid: u32) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(format!("/proc/{pid}/comm"))?
        .trim()
        .to_owned())
}

/// Waits (bounded by the harness patience) until something listens on TCP `port` in `pod`.
pub fn wait_listening(pod: &Pod, port: u16) -> anyhow::Result<()> {
    let filter = format!("sport = :{port}");
    let listening = eventually(PATIENCE, || {
        let out = pod.exec(&["ss", "-Hltn", &filter]);
        out.status.success() && !out.stdout.is_empty()
    });
    if !listening {
        anyhow::bail!(
            "nothing listens on port {port} in pod {} after {PATIENCE:?}",
            pod.name
        );
    }
    Ok(())
}
