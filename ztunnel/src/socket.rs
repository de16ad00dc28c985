//! Socket creation with the options the mesh needs: SO_MARK on everything the proxy opens
//! (so redirect rules let the proxy's own traffic through), SO_REUSEPORT on listeners (so a
//! new proxy can bind beside a draining one), IP_TRANSPARENT for source-IP preservation, and
//! the original destination of captured connections.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::inpod::netns::InpodNetns;

/// Listen backlog for every listener.
const BACKLOG: i32 = 1024;

/// How sockets are made: one place for the mark and the shared options.
#[derive(Debug, Clone, Copy, Default)]
pub struct SocketFactory {
    /// SO_MARK for every socket (`None` = leave unmarked).
    pub mark: Option<u32>,
}

/// Maps an IPv4-mapped IPv6 address back to IPv4.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

fn keepalive() -> TcpKeepalive {
    TcpKeepalive::new()
        .with_time(Duration::from_secs(180))
        .with_interval(Duration::from_secs(180))
        .with_retries(9)
}

impl SocketFactory {
    fn apply_mark(&self, sock: &SockRef<'_>) -> io::Result<()> {
        if let Some(mark) = self.mark {
            sock.set_mark(mark).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("setting SO_MARK {mark:#x}: {e} (needs CAP_NET_ADMIN)"),
                )
            })?;
        }
        Ok(())
    }

    /// Binds a listener with SO_REUSEADDR, SO_REUSEPORT and the mark. With `transparent`,
    /// IP_TRANSPARENT is set best-effort (TPROXY); returns whether it took effect.
    pub fn listen(&self, addr: SocketAddr, transparent: bool) -> io::Result<(TcpListener, bool)> {
        self.listen_with(&new_stream_socket, addr, transparent, true)
    }

    fn listen_with(
        &self,
        make: &dyn Fn(Domain) -> io::Result<Socket>,
        addr: SocketAddr,
        transparent: bool,
        reuse_port: bool,
    ) -> io::Result<(TcpListener, bool)> {
        let socket = make(Domain::for_address(addr))?;
        if addr.is_ipv6() {
            // Dual-stack: one listener serves v4 (as mapped addresses) and v6.
            socket.set_only_v6(false)?;
        }
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(reuse_port)?;
        self.apply_mark(&SockRef::from(&socket))?;
        let transparent = transparent
            && if addr.is_ipv6() {
                socket.set_ip_transparent_v6(true).is_ok()
            } else {
                socket.set_ip_transparent_v4(true).is_ok()
            };
        socket.set_nonblocking(true)?;
        socket
            .bind(&addr.into())
            .map_err(|e| io::Error::new(e.kind(), format!("binding {addr}: {e}")))?;
        socket.listen(BACKLOG)?;
        Ok((TcpListener::from_std(socket.into())?, transparent))
    }

    /// Binds a listener, falling back from `[::]` to `0.0.0.0` on hosts without IPv6.
    pub fn listen_any_family(
        &self,
        addr: SocketAddr,
        transparent: bool,
    ) -> io::Result<(TcpListener, bool)> {
        self.listen_any_family_with(&new_stream_socket, addr, transparent, true)
    }

    fn listen_any_family_with(
        &self,
        make: &dyn Fn(Domain) -> io::Result<Socket>,
        addr: SocketAddr,
        transparent: bool,
        reuse_port: bool,
    ) -> io::Result<(TcpListener, bool)> {
        match self.listen_with(make, addr, transparent, reuse_port) {
            Err(e)
                if addr.is_ipv6()
                    && addr.ip().is_unspecified()
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)
                    ) =>
            {
                let v4 = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), addr.port());
                self.listen_with(make, v4, transparent, reuse_port)
            }
            other => other,
        }
    }

    /// Connects to `dst` with the mark, TCP_NODELAY and keepalive, within `timeout`.
    /// With `src`, the socket is bound to that (foreign) IP with IP_TRANSPARENT + FREEBIND
    /// so the peer sees the original client address.
    pub async fn connect(
        &self,
        dst: SocketAddr,
        src: Option<IpAddr>,
        timeout: Duration,
    ) -> io::Result<TcpStream> {
        let socket = new_stream_socket(Domain::for_address(dst))?;
        self.connect_socket(socket, dst, src, timeout).await
    }

    async fn connect_socket(
        &self,
        socket: Socket,
        dst: SocketAddr,
        src: Option<IpAddr>,
        timeout: Duration,
    ) -> io::Result<TcpStream> {
        socket.set_nonblocking(true)?;
        let socket = TcpSocket::from_std_stream(socket.into());
        {
            let sock = SockRef::from(&socket);
            self.apply_mark(&sock)?;
            sock.set_tcp_nodelay(true)?;
            sock.set_tcp_keepalive(&keepalive())?;
        }
        if let Some(src) = src {
            let sock = SockRef::from(&socket);
            match src {
                IpAddr::V4(_) => {
                    sock.set_ip_transparent_v4(true)?;
                    sock.set_freebind_v4(true)?;
                }
                IpAddr::V6(_) => {
                    sock.set_ip_transparent_v6(true)?;
                    sock.set_freebind_v6(true)?;
                }
            }
            socket.bind(SocketAddr::new(src, 0))?;
        }
        match tokio::time::timeout(timeout, socket.connect(dst)).await {
            Ok(res) => res,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect to {dst} timed out after {timeout:?}"),
            )),
        }
    }

    /// Whether this process may use IP_TRANSPARENT (CAP_NET_ADMIN); probed once at start-up.
    pub fn can_spoof_source(&self) -> bool {
        Socket::new(Domain::IPV4, Type::STREAM, None)
            .and_then(|s| s.set_ip_transparent_v4(true))
            .is_ok()
    }
}

fn new_stream_socket(domain: Domain) -> io::Result<Socket> {
    Socket::new(domain, Type::STREAM.cloexec(), Some(Protocol::TCP))
}

/// The sockets of one proxy instance: the [`SocketFactory`] options, created in ztunnel's
/// own network namespace (dedicated mode) or in a pod's (shared mode: outbound HBONE leaves
/// from the pod IP, inbound delivery to the app happens inside the pod).
#[derive(Debug, Clone)]
pub struct ProxySockets {
    /// Mark and shared options.
    pub factory: SocketFactory,
    /// The pod netns every socket is created in (`None`: the current netns).
    pub netns: Option<Arc<InpodNetns>>,
    /// SO_REUSEPORT on listeners.
    pub reuse_port: bool,
}

impl From<SocketFactory> for ProxySockets {
    fn from(factory: SocketFactory) -> ProxySockets {
        ProxySockets {
            factory,
            netns: None,
            reuse_port: true,
        }
    }
}

impl ProxySockets {
    fn make(&self, domain: Domain) -> io::Result<Socket> {
        match &self.netns {
            None => new_stream_socket(domain),
            Some(netns) => netns.run(|| new_stream_socket(domain))?,
        }
    }

    /// [`SocketFactory::listen`] in this proxy's netns.
    pub fn listen(&self, addr: SocketAddr, transparent: bool) -> io::Result<(TcpListener, bool)> {
        self.factory
            .listen_with(&|d| self.make(d), addr, transparent, self.reuse_port)
    }

    /// [`SocketFactory::listen_any_family`] in this proxy's netns.
    pub fn listen_any_family(
        &self,
        addr: SocketAddr,
        transparent: bool,
    ) -> io::Result<(TcpListener, bool)> {
        self.factory
            .listen_any_family_with(&|d| self.make(d), addr, transparent, self.reuse_port)
    }

    /// [`SocketFactory::connect`] from this proxy's netns.
    pub async fn connect(
        &self,
        dst: SocketAddr,
        src: Option<IpAddr>,
        timeout: Duration,
    ) -> io::Result<TcpStream> {
        let socket = self.make(Domain::for_address(dst))?;
        self.factory.connect_socket(socket, dst, src, timeout).await
    }
}

/// Finds where a captured connection was originally going. A trait so the eBPF redirect
/// (which answers `SO_ORIGINAL_DST` from a map) or TPROXY can plug in.
pub trait OriginalDestination: Send + Sync + 'static {
    /// The original destination of an accepted, redirected connection.
    fn original_dst(&self, stream: &TcpStream) -> io::Result<SocketAddr>;
}

/// `SO_ORIGINAL_DST` (iptables REDIRECT or the eBPF getsockopt hook), else the local
/// address (TPROXY keeps the original destination as the local address).
#[derive(Debug, Default, Clone, Copy)]
pub struct SoOriginalDst;

impl OriginalDestination for SoOriginalDst {
    fn original_dst(&self, stream: &TcpStream) -> io::Result<SocketAddr> {
        let sock = SockRef::from(stream);
        let from_nat = sock
            .original_dst_v4()
            .or_else(|_| sock.original_dst_v6())
            .ok()
            .and_then(|a| a.as_socket());
        match from_nat {
            Some(addr) => Ok(canonical(addr)),
            None => stream.local_addr().map(canonical),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonicalizes_mapped() {
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:80".parse().unwrap();
        assert_eq!(
            canonical(mapped),
            "10.0.0.1:80".parse::<SocketAddr>().unwrap()
        );
        let v6: SocketAddr = "[fd00::1]:80".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }

    #[tokio::test]
    async fn listen_and_connect_without_mark() {
        let f = SocketFactory { mark: None };
        let (l, _) = f.listen("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let addr = l.local_addr().unwrap();
        let (c, s) = tokio::join!(f.connect(addr, None, Duration::from_secs(5)), l.accept());
        let c = c.unwrap();
        let (s, peer) = s.unwrap();
        assert_eq!(peer, c.local_addr().unwrap());
        // Not redirected: the original destination is the local address.
        assert_eq!(SoOriginalDst.original_dst(&s).unwrap(), addr);
    }

    #[tokio::test]
    async fn reuseport_allows_second_listener() {
        let f = SocketFactory { mark: None };
        let (l, _) = f.listen("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let addr = l.local_addr().unwrap();
        assert!(
            f.listen(addr, false).is_ok(),
            "a second proxy must bind beside the first"
        );
    }
}
