//! Packet captures on the node-to-node link (`tcpdump`) and a small pcap reader.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{NEXT_ID, NODE_LINK, Node, OrPanic, PATIENCE, Topology, UPLINK, eventually, nsenter};

impl Topology {
    /// Starts `tcpdump` on `node`'s end of the node-to-node link and waits until it listens.
    pub fn start_capture(&self, node: &Node) -> Capture {
        let peer = NODE_LINK[usize::from(node.index) % NODE_LINK.len()];
        self.start_capture_on(node, UPLINK, peer)
    }

    /// Starts `tcpdump` on interface `iface` of `node` (e.g. `br0`, the pods' bridge); the
    /// fence datagram [`Capture::stop`] sends goes to `fence_to`, which must be reached
    /// through `iface` (e.g. a pod IP on that bridge).
    pub fn start_capture_on(&self, node: &Node, iface: &str, fence_to: Ipv4Addr) -> Capture {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let file = self
            .work_dir
            .join(format!("{}-{iface}-{id}.pcap", node.name));
        let mut child = nsenter(&node.netns)
            .args([
                "tcpdump",
                "-i",
                iface,
                "-n",
                "-s",
                "0",
                "-U",
                "--immediate-mode",
            ])
            .args(["-Z", "root", "-w"])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .or_panic(|| format!("starting tcpdump on node {}", node.name));
        let (tx, rx) = mpsc::channel();
        if let Some(stderr) = child.stderr.take() {
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        let mut capture = Capture {
            node: node.clone(),
            peer_ip: fence_to,
            file,
            child: Some(child),
        };
        let deadline = Instant::now() + PATIENCE;
        let mut said = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("listening on") => return capture,
                Ok(line) => said.push(line),
                Err(_) => {
                    capture.kill();
                    panic!(
                        "tcpdump on node {} did not report `listening on` within {PATIENCE:?}; \
                         it said: {said:?}",
                        node.name
                    );
                }
            }
        }
    }
}

/// A running `tcpdump` on a node's end of the node-to-node link.
pub struct Capture {
    node: Node,
    peer_ip: Ipv4Addr,
    file: PathBuf,
    child: Option<Child>,
}

impl Capture {
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the capture and returns what it saw. Before stopping, a fence datagram is sent
    /// over the link and awaited in the file, so every earlier packet has been written.
    pub fn stop(mut self) -> PcapData {
        let fence = format!(
            "ztt-capture-fence-{}",
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        );
        let peer = SocketAddr::from((self.peer_ip, 9));
        self.node
            .run_in(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?.send_to(fence.as_bytes(), peer))
            .or_panic(|| format!("sending the capture fence on node {}", self.node.name));
        let fenced = eventually(PATIENCE, || {
            let bytes = fs::read(&self.file).unwrap_or_default();
            count(&bytes, fence.as_bytes()) > 0
        });
        assert!(
            fenced,
            "tcpdump on node {} never wrote the fence packet",
            self.node.name
        );
        if let Some(mut child) = self.child.take() {
            let pid = i32::try_from(child.id()).or_panic(|| "tcpdump pid".to_owned());
            let _ = kill(Pid::from_raw(pid), Signal::SIGINT);
            if !eventually(PATIENCE, || matches!(child.try_wait(), Ok(Some(_)))) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        let raw = fs::read(&self.file).or_panic(|| format!("reading {}", self.file.display()));
        PcapData::parse(raw)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One IPv4 TCP segment seen in a capture.
#[derive(Debug, Clone)]
pub struct TcpSegment {
    /// Source address and port.
    pub src: SocketAddrV4,
    /// Destination address and port.
    pub dst: SocketAddrV4,
    /// TCP payload.
    pub payload: Vec<u8>,
}

impl TcpSegment {
    /// Whether either end uses `port`.
    pub fn has_port(&self, port: u16) -> bool {
        self.src.port() == port || self.dst.port() == port
    }
}

/// A finished capture: the pcap bytes and the TCP segments in them.
#[derive(Debug, Clone)]
pub struct PcapData {
    raw: Vec<u8>,
    segments: Vec<TcpSegment>,
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    if needle.is_empty() {
        return 0;
    }
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

impl PcapData {
    /// Parses a pcap file (Ethernet or Linux cooked link types); panics if it is not pcap.
    pub fn parse(raw: Vec<u8>) -> PcapData {
        let segments = parse_pcap(&raw).or_panic(|| "parsing the capture".to_owned());
        PcapData { raw, segments }
    }

    /// The pcap file bytes.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// Every IPv4 TCP segment, in capture order.
    pub fn segments(&self) -> &[TcpSegment] {
        &self.segments
    }

    /// How often `needle` occurs anywhere in the capture (headers and payloads alike).
    pub fn occurrences(&self, needle: &[u8]) -> usize {
        count(&self.raw, needle)
    }

    /// Total TCP payload bytes to or from `port`.
    pub fn payload_bytes_on_port(&self, port: u16) -> usize {
        let on_port = self.segments.iter().filter(|s| s.has_port(port));
        on_port.map(|s| s.payload.len()).sum()
    }

    /// Segments to or from `port` holding a TLS 1.2/1.3 application-data record header
    /// (`0x17 0x03 0x03`).
    pub fn tls_app_data_segments(&self, port: u16) -> usize {
        let on_port = self.segments.iter().filter(|s| s.has_port(port));
        on_port
            .filter(|s| count(&s.payload, &[0x17, 0x03, 0x03]) > 0)
            .count()
    }

    /// The (source port, destination port) pairs of segments that carry payload.
    pub fn payload_ports(&self) -> BTreeSet<(u16, u16)> {
        let with_payload = self.segments.iter().filter(|s| !s.payload.is_empty());
        with_payload.map(|s| (s.src.port(), s.dst.port())).collect()
    }
}

fn parse_pcap(raw: &[u8]) -> Result<Vec<TcpSegment>, String> {
    let magic = raw.get(..4).ok_or("shorter than a pcap header")?;
    let little = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        other => return Err(format!("not a pcap file (magic {other:02x?})")),
    };
    let word = |at: usize| -> Result<usize, String> {
        let bytes: [u8; 4] = raw
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .ok_or("truncated pcap")?;
        let value = if little {
            u32::from_le_bytes(bytes)
        } else {
            u32::from_be_bytes(bytes)
        };
        Ok(value as usize)
    };
    // (link header length, offset of the ethertype within it)
    let (l2_len, ethertype_at) = match word(20)? {
        1 => (14, 12),
        113 => (16, 14),
        276 => (20, 0),
        other => return Err(format!("unsupported pcap link type {other}")),
    };
    let mut segments = Vec::new();
    let mut at = 24;
    while at + 16 <= raw.len() {
        let len = word(at + 8)?;
        let frame = raw
            .get(at + 16..at + 16 + len)
            .ok_or("truncated pcap record")?;
        at += 16 + len;
        if be16(frame, ethertype_at) != Some(0x0800) {
            continue;
        }
        if let Some(segment) = frame.get(l2_len..).and_then(parse_ipv4_tcp) {
            segments.push(segment);
        }
    }
    Ok(segments)
}

fn parse_ipv4_tcp(packet: &[u8]) -> Option<TcpSegment> {
    if packet.first()? >> 4 != 4 || *packet.get(9)? != 6 {
        return None;
    }
    let header = usize::from(packet[0] & 0x0f) * 4;
    let total = usize::from(be16(packet, 2)?);
    // Total length 0 means a GSO super-packet: take the frame as it is.
    let packet = if total == 0 {
        packet
    } else {
        packet.get(..total.min(packet.len()))?
    };
    let tcp = packet.get(header..)?;
    let data_at = usize::from(*tcp.get(12)? >> 4) * 4;
    let addr = |at: usize| {
        let b = packet.get(at..at + 4)?;
        Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    };
    Some(TcpSegment {
        src: SocketAddrV4::new(addr(12)?, be16(tcp, 0)?),
        dst: SocketAddrV4::new(addr(16)?, be16(tcp, 2)?),
        payload: tcp.get(data_at..)?.to_vec(),
    })
}
