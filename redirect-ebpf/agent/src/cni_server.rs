//! The CNI event server: a unix stream socket where the plugin writes one JSON line
//! ([`CniEvent`]) and reads one back ([`CniReply`]).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mesh_cni::event::{CniEvent, CniReply, MAX_LINE};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::reconcile::{Event, EventTx};
use crate::zds::packet::remove_stale_socket;

/// Longest the server waits for the plugin's line, and for the reconcile loop's answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `path` (stale socket removed, parent created, mode 0600).
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    remove_stale_socket(path)?;
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves plugin connections until `shutdown`, handing events to the reconcile loop.
pub async fn serve(listener: UnixListener, events: EventTx, shutdown: CancellationToken) {
    serve_counted(listener, events, Arc::default(), shutdown).await;
}

/// [`serve`], counting requests and bad input in `metrics`.
pub async fn serve_counted(
    listener: UnixListener,
    events: EventTx,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            s = listener.accept() => s,
        };
        match stream {
            Ok((stream, _)) => {
                let events = events.clone();
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, events, &metrics).await {
                        tracing::warn!(error = %e, "cni: request failed");
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "cni: accept failed"),
        }
    }
}

/// Parses what was read from the plugin's connection (up to and including the first
/// newline, at most [`MAX_LINE`] + 1 bytes): the event, or the reply refusing the input.
pub fn parse_request(read: &[u8]) -> Result<CniEvent, CniReply> {
    let Some((b'\n', line)) = read.split_last() else {
        return Err(CniReply::error("request is not one JSON line"));
    };
    serde_json::from_slice::<CniEvent>(line)
        .map_err(|e| CniReply::error(format!("invalid request: {e}")))
}

async fn handle(stream: UnixStream, events: EventTx, metrics: &Metrics) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut reader = BufReader::new(read).take(MAX_LINE as u64 + 1);
    let n = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line))
        .await
        .map_err(|_| {
            metrics.cni_bad_request();
            std::io::Error::new(std::io::ErrorKind::TimedOut, "no request line")
        })??;
    let reply = match parse_request(&line[..n]) {
        Err(bad) => {
            metrics.cni_bad_request();
            bad
        }
        Ok(ev) => {
            let command = ev.command;
            let (tx, rx) = oneshot::channel();
            let reply = if events.send(Event::Cni(ev, tx)).is_err() {
                CniReply::error("agent is shutting down")
            } else {
                match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
                    Ok(Ok(reply)) => reply,
                    Ok(Err(_)) => CniReply::error("agent is shutting down"),
                    Err(_) => CniReply::error("agent did not answer in time"),
                }
            };
            metrics.cni_event(command, reply.ok);
            reply
        }
    };
    let mut out = serde_json::to_vec(&reply).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}
