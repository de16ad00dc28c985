//! Bidirectional byte copy between the two legs of a proxied connection.

use std::io;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::error::ProxyError;

/// Copy buffer per direction. Large enough to fill a TLS record and an H2 DATA frame batch.
const BUFFER: usize = 64 * 1024;

/// Copies both ways until both sides finished (EOF on one side half-closes the other), or
/// until `revoked` fires. Returns (bytes a→b, bytes b→a). Resets and broken pipes at the
/// end of a connection are normal TCP behaviour and are not errors.
pub async fn bidirectional<A, B>(
    a: &mut A,
    b: &mut B,
    revoked: Option<&CancellationToken>,
) -> Result<(u64, u64), ProxyError>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let copy = tokio::io::copy_bidirectional_with_sizes(a, b, BUFFER, BUFFER);
    let res = match revoked {
        Some(token) => tokio::select! {
            res = copy => res,
            _ = token.cancelled() => return Err(ProxyError::Revoked),
        },
        None => copy.await,
    };
    match res {
        Ok(counts) => Ok(counts),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::NotConnected
            ) =>
        {
            Ok((0, 0))
        }
        Err(e) => Err(ProxyError::Io(e)),
    }
}
