//! Traffic for the latency, connection-rate and idle-connection phases.
//!
//! The server is a separate process in the server pod ([`EchoServer`]). Clients are plain blocking sockets on threads inside the client pod's netns
//! ([`Pod::run_in`]; threads spawned from there inherit the netns): nothing but the kernel
//! and, when meshed, the two proxies sits between the two ends, and a bounded timeout
//! applies to every read and write.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ztunnel::test_helpers::netns::Pod;

use super::{stop_requested, wait_listening};

/// Bound on every connect, read and write of the clients.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-connection buffer of the echo server: small, so 10,000 idle connections stay cheap.
const ECHO_BUFFER: usize = 4 * 1024;

/// A TCP echo server (nodelay, echoes until EOF) in a pod: this same binary re-run as
/// `netbench serve-echo <port>` under `nsenter`, so that the server app is its own process
/// with its own file-descriptor budget, as in a real pod. Killed on drop; it also exits by
/// itself when the harness dies (its stdin, a pipe from the harness, closes).
pub struct EchoServer {
    addr: SocketAddr,
    child: Child,
}

impl EchoServer {
    /// Starts the server on `0.0.0.0:port` in `pod` and waits until it listens.
    pub fn start(pod: &Pod, port: u16) -> anyhow::Result<EchoServer> {
        let exe = std::env::current_exe().context("locating the netbench binary")?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", pod.netns_path().display()))
            .arg("--")
            .arg(exe)
            .args([SERVE_ECHO, &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the echo server")?;
        let server = EchoServer {
            addr: pod.addr(port),
            child,
        };
        wait_listening(pod, port)?;
        Ok(server)
    }

    /// `podIP:port`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The subcommand [`EchoServer`] runs: `netbench serve-echo <port>`.
pub const SERVE_ECHO: &str = "serve-echo";

/// Body of `netbench serve-echo <port>`: serves on `0.0.0.0:port` of the current netns
/// until stdin closes.
pub fn serve_echo(port: u16) -> anyhow::Result<()> {
    // Exit with the harness: its end of our stdin closes when it exits, however it exits.
    thread::spawn(|| {
        let _ = io::copy(&mut io::stdin(), &mut io::sink());
        std::process::exit(0);
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the echo server runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
            .await
            .with_context(|| format!("binding 0.0.0.0:{port}"))?;
        loop {
            // Accept errors (EMFILE under load) are transient for a server.
            if let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(echo(stream));
            }
        }
    })
}

async fn echo(mut stream: tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; ECHO_BUFFER];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn connect(dst: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&dst, IO_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

fn round_trip(stream: &mut TcpStream, out: &[u8], back: &mut [u8]) -> io::Result<()> {
    stream.write_all(out)?;
    stream.read_exact(back)
}

fn stopped() -> io::Error {
    io::Error::new(io::ErrorKind::Interrupted, "stop requested")
}

/// Request/response latency on one open connection from `pod` to the echo server at
/// `dst`: `warmup` untimed round trips, then `count` timed ones of `size` bytes each way.
pub fn round_trips(
    pod: &Pod,
    dst: SocketAddr,
    size: usize,
    warmup: usize,
    count: usize,
) -> io::Result<Vec<Duration>> {
    pod.run_in(|| {
        let mut stream = connect(dst)?;
        let out: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let mut back = vec![0u8; size];
        for _ in 0..warmup {
            round_trip(&mut stream, &out, &mut back)?;
        }
        let mut samples = Vec::with_capacity(count);
        for _ in 0..count {
            if stop_requested() {
                return Err(stopped());
            }
            let start = Instant::now();
            round_trip(&mut stream, &out, &mut back)?;
            samples.push(start.elapsed());
        }
        if back != out {
            return Err(io::Error::other("the echo returned different bytes"));
        }
        Ok(samples)
    })
}

/// Outcome of a connection-rate run.
#[derive(Debug, Clone, Serialize)]
pub struct RateResult {
    /// Connections that completed connect + 1-byte echo + close.
    pub completed: usize,
    /// Connections that failed (any step).
    pub failed: usize,
    /// Concurrent client threads.
    pub workers: usize,
    /// Wall time of the run, seconds.
    pub seconds: f64,
    /// Completed connections per second.
    pub per_second: f64,
    /// The first failure, if any.
    pub first_error: Option<String>,
}

/// `count` fresh connections from `pod` to the echo server at `dst`, each: connect, send one
/// byte, read it back, close. `workers` threads share the count.
pub fn connection_rate(pod: &Pod, dst: SocketAddr, count: usize, workers: usize) -> RateResult {
    let workers = workers.clamp(1, count.max(1));
    let next = AtomicUsize::new(0);
    let (completed, failed) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let first_error = Mutex::new(None);
    let one = || -> io::Result<()> {
        let mut stream = connect(dst)?;
        let mut back = [0u8; 1];
        round_trip(&mut stream, b"x", &mut back)
    };
    let start = Instant::now();
    pod.run_in(|| {
        thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| {
                    while next.fetch_add(1, Ordering::Relaxed) < count && !stop_requested() {
                        match one() {
                            Ok(()) => completed.fetch_add(1, Ordering::Relaxed),
                            Err(err) => {
                                let mut first =
                                    first_error.lock().unwrap_or_else(|p| p.into_inner());
                                first.get_or_insert_with(|| err.to_string());
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                });
            }
        });
    });
    let seconds = start.elapsed().as_secs_f64();
    let completed = completed.into_inner();
    RateResult {
        completed,
        failed: failed.into_inner(),
        workers,
        seconds,
        per_second: completed as f64 / seconds.max(f64::EPSILON),
        first_error: first_error.into_inner().unwrap_or_else(|p| p.into_inner()),
    }
}

/// Opens up to `count` connections from `pod` to the echo server at `dst` and leaves them
/// open; each is proven end to end by a 1-byte echo. Stops at the first failure (e.g. out
/// of file descriptors) and returns what it has, with that error.
pub fn open_idle(pod: &Pod, dst: SocketAddr, count: usize) -> (Vec<TcpStream>, Option<io::Error>) {
    pod.run_in(|| {
        let mut open = Vec::with_capacity(count);
        let mut back = [0u8; 1];
        for _ in 0..count {
            if stop_requested() {
                return (open, Some(stopped()));
            }
            let result = connect(dst).and_then(|mut stream| {
                round_trip(&mut stream, b"i", &mut back)?;
                Ok(stream)
            });
            match result {
                Ok(stream) => open.push(stream),
                Err(err) => return (open, Some(err)),
            }
        }
        (open, None)
    })
}
