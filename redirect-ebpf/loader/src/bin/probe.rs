//! `redirect-ebpf-probe`: shows what the redirection does to a connection, from inside a
//! pod netns (run it with `nsenter --net=...`, in the pod's cgroup).
//!
//! ```text
//! redirect-ebpf-probe listen <addr:port> [--count N] [--mark M]
//!     prints `LISTENING <addr>`, then per accepted connection
//!     `ACCEPTED local=<getsockname> peer=<getpeername> origdst=<SO_ORIGINAL_DST|none>`
//!     and answers `hello from=<listening addr> local=<local>` to the client
//! redirect-ebpf-probe connect <addr:port> [--mark M] [--bind <ip>]
//!     prints `CONNECTED local=<> peer=<>` and `RECEIVED <line>`, or `ERROR <reason>` (exit 1)
//! ```
//! The program tests of the loader drive it as the client and the proxy.

use std::{
    io::{BufRead, BufReader, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsFd,
    process::ExitCode,
    time::Duration,
};

use nix::sys::socket::{getsockopt, sockopt};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

const TIMEOUT: Duration = Duration::from_secs(5);

struct Opts {
    addr: SocketAddr,
    mark: Option<u32>,
    bind: Option<IpAddr>,
    count: usize,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let addr = args
        .first()
        .ok_or("missing <addr:port>")?
        .parse()
        .map_err(|e| format!("bad address: {e}"))?;
    let mut opts = Opts {
        addr,
        mark: None,
        bind: None,
        count: 1,
    };
    let mut rest = args[1..].iter();
    while let Some(flag) = rest.next() {
        let value = rest.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--mark" => {
                let v = value.trim_start_matches("0x");
                let radix = if value.starts_with("0x") { 16 } else { 10 };
                opts.mark =
                    Some(u32::from_str_radix(v, radix).map_err(|e| format!("--mark: {e}"))?);
            }
            "--bind" => opts.bind = Some(value.parse().map_err(|e| format!("--bind: {e}"))?),
            "--count" => opts.count = value.parse().map_err(|e| format!("--count: {e}"))?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(opts)
}

fn socket_for(addr: &SocketAddr, mark: Option<u32>) -> std::io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(*addr),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    if let Some(mark) = mark {
        socket.set_mark(mark)?;
    }
    Ok(socket)
}

fn original_dst(stream: &TcpStream) -> String {
    let v4 = getsockopt(&stream.as_fd(), sockopt::OriginalDst).map(|sin| {
        let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        SocketAddr::from((ip, u16::from_be(sin.sin_port)))
    });
    if let Ok(addr) = v4 {
        return addr.to_string();
    }
    match getsockopt(&stream.as_fd(), sockopt::Ip6tOriginalDst) {
        Ok(sin6) => {
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            SocketAddr::from((ip, u16::from_be(sin6.sin6_port))).to_string()
        }
        Err(_) => "none".to_string(),
    }
}

/// IPv4-mapped IPv6 socket addresses shown as IPv4.
fn plain(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => addr,
        },
        v4 => v4,
    }
}

fn listen(opts: &Opts) -> std::io::Result<()> {
    let socket = socket_for(&opts.addr, opts.mark)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SockAddr::from(opts.addr))?;
    socket.listen(128)?;
    let listener: TcpListener = socket.into();
    let listening = plain(listener.local_addr()?);
    println!("LISTENING {listening}");
    std::io::stdout().flush()?;
    for _ in 0..opts.count {
        let (mut stream, peer) = listener.accept()?;
        let (local, peer) = (plain(stream.local_addr()?), plain(peer));
        println!(
            "ACCEPTED local={local} peer={peer} origdst={}",
            original_dst(&stream)
        );
        std::io::stdout().flush()?;
        // The client may already be gone (e.g. a test that only checks the accept).
        let _ = writeln!(stream, "hello from={listening} local={local}");
    }
    Ok(())
}

fn connect(opts: &Opts) -> Result<(), String> {
    let socket = socket_for(&opts.addr, opts.mark).map_err(|e| format!("socket: {e}"))?;
    if let Some(ip) = opts.bind {
        socket
            .bind(&SockAddr::from(SocketAddr::new(ip, 0)))
            .map_err(|e| format!("bind: {e}"))?;
    }
    socket
        .connect_timeout(&SockAddr::from(opts.addr), TIMEOUT)
        .map_err(|e| format!("connect: {}", e.kind()))?;
    let stream: TcpStream = socket.into();
    let local = plain(
        stream
            .local_addr()
            .map_err(|e| format!("getsockname: {e}"))?,
    );
    let peer = plain(
        stream
            .peer_addr()
            .map_err(|e| format!("getpeername: {e}"))?,
    );
    println!("CONNECTED local={local} peer={peer}");
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(|e| format!("timeout: {e}"))?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(|e| format!("read: {}", e.kind()))?;
    println!("RECEIVED {}", line.trim_end());
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = args.first() else {
        eprintln!(
            "usage: redirect-ebpf-probe listen|connect <addr:port> [--mark M] [--bind IP] [--count N]"
        );
        return ExitCode::from(2);
    };
    let opts = match parse(&args[1..]) {
        Ok(opts) => opts,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let result = match command.as_str() {
        "listen" => listen(&opts).map_err(|e| format!("listen: {e}")),
        "connect" => connect(&opts),
        other => Err(format!("unknown command {other}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("ERROR {e}");
            ExitCode::FAILURE
        }
    }
}
