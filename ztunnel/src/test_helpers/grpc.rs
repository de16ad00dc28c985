//! Serving tonic services on 127.0.0.1 port 0, plaintext (h2c) or TLS, for the fakes.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test helper")]

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tonic::codegen::tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::server::{Connected, Router};

/// A server-side connection: plain TCP or TLS.
pub enum FakeIo {
    /// h2c.
    Plain(TcpStream),
    /// TLS.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connected for FakeIo {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl AsyncRead for FakeIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            FakeIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            FakeIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for FakeIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            FakeIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            FakeIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            FakeIo::Plain(s) => Pin::new(s).poll_flush(cx),
            FakeIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            FakeIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            FakeIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Serves `router` on 127.0.0.1 (port 0) until `shutdown`; TLS when `tls` is given.
/// Returns the bound address.
pub async fn serve(
    router: Router,
    tls: Option<Arc<ServerConfig>>,
    shutdown: CancellationToken,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel::<io::Result<FakeIo>>();
    let accept_stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = tokio::select! {
                () = accept_stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(_) => continue,
                },
            };
            match &tls {
                None => {
                    let _ = tx.send(Ok(FakeIo::Plain(tcp)));
                }
                Some(config) => {
                    let acceptor = TlsAcceptor::from(config.clone());
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        // A failed handshake is the client's problem; nothing to serve.
                        if let Ok(s) = acceptor.accept(tcp).await {
                            let _ = tx.send(Ok(FakeIo::Tls(Box::new(s))));
                        }
                    });
                }
            }
        }
    });
    tokio::spawn(async move {
        let _ = router
            .serve_with_incoming_shutdown(UnboundedReceiverStream::new(rx), shutdown.cancelled())
            .await;
    });
    addr
}
