//! SOCKS5 (15080, off by default): no-auth CONNECT only; the connection is then handled
//! exactly like a captured outbound one. Mostly a way to inject traffic in tests and benches.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::warn;

use super::ProxyInputs;
use super::error::ProxyError;
use crate::identity::BoxFuture;
use crate::proxy::listener::Handler;

const VERSION: u8 = 5;
const NO_AUTH: u8 = 0;
const NO_ACCEPTABLE_METHOD: u8 = 0xff;
const CMD_CONNECT: u8 = 1;
const REPLY_OK: u8 = 0;
const REPLY_GENERAL_FAILURE: u8 = 1;
const REPLY_CMD_NOT_SUPPORTED: u8 = 7;
const REPLY_ATYP_NOT_SUPPORTED: u8 = 8;

/// The SOCKS5 handler.
pub struct Socks5 {
    pub(crate) inputs: Arc<ProxyInputs>,
}

impl Handler for Socks5 {
    fn handle(self: Arc<Self>, mut stream: TcpStream, peer: SocketAddr) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            match handshake(&mut stream).await {
                Ok(dst) => self.inputs.clone().proxy_outbound(stream, peer, dst).await,
                Err(e) => {
                    warn!(target: "access", direction = "outbound", src.addr = %peer, error = %e, "connection failed")
                }
            }
        })
    }
}

async fn reply(stream: &mut TcpStream, code: u8) -> std::io::Result<()> {
    stream
        .write_all(&[VERSION, code, 0, 1, 0, 0, 0, 0, 0, 0])
        .await
}

/// Reads the greeting and the CONNECT request; answers success and returns the target.
pub async fn handshake(stream: &mut TcpStream) -> Result<SocketAddr, ProxyError> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await?;
    if head[0] != VERSION {
        return Err(ProxyError::Protocol(format!(
            "SOCKS version {} unsupported",
            head[0]
        )));
    }
    let mut methods = vec![0u8; head[1] as usize];
    stream.read_exact(&mut methods).await?;
    if !methods.contains(&NO_AUTH) {
        stream.write_all(&[VERSION, NO_ACCEPTABLE_METHOD]).await?;
        return Err(ProxyError::Protocol(
            "client offers no no-auth method".into(),
        ));
    }
    stream.write_all(&[VERSION, NO_AUTH]).await?;

    let mut req = [0u8; 4];
    stream.read_exact(&mut req).await?;
    if req[0] != VERSION {
        return Err(ProxyError::Protocol("bad request version".into()));
    }
    if req[1] != CMD_CONNECT {
        reply(stream, REPLY_CMD_NOT_SUPPORTED).await?;
        return Err(ProxyError::Protocol(format!(
            "command {} unsupported",
            req[1]
        )));
    }
    let ip = match req[3] {
        1 => {
            let mut b = [0u8; 4];
            stream.read_exact(&mut b).await?;
            IpAddr::V4(Ipv4Addr::from(b))
        }
        4 => {
            let mut b = [0u8; 16];
            stream.read_exact(&mut b).await?;
            IpAddr::V6(Ipv6Addr::from(b))
        }
        3 => {
            let len = stream.read_u8().await? as usize;
            let mut name = vec![0u8; len];
            stream.read_exact(&mut name).await?;
            let port = stream.read_u16().await?;
            let name = String::from_utf8(name)
                .map_err(|_| ProxyError::Protocol("domain is not UTF-8".into()))?;
            let resolved = tokio::net::lookup_host((name.as_str(), port))
                .await
                .ok()
                .and_then(|mut a| a.next());
            return match resolved {
                Some(addr) => {
                    reply(stream, REPLY_OK).await?;
                    Ok(addr)
                }
                None => {
                    reply(stream, REPLY_GENERAL_FAILURE).await?;
                    Err(ProxyError::Protocol(format!("cannot resolve {name}")))
                }
            };
        }
        other => {
            reply(stream, REPLY_ATYP_NOT_SUPPORTED).await?;
            return Err(ProxyError::Protocol(format!(
                "address type {other} unsupported"
            )));
        }
    };
    let port = stream.read_u16().await?;
    reply(stream, REPLY_OK).await?;
    Ok(SocketAddr::new(ip, port))
}
