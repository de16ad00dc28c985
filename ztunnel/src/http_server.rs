//! The one small HTTP/1 server behind the admin (15000), metrics (15020) and readiness (15021)
//! ports: accept, serve each connection with hyper, stop on a token (in-flight responses are
//! finished, idle keep-alive connections closed).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// What every handler answers.
pub type Response = http::Response<Full<Bytes>>;

/// How long a connection may take to finish its in-flight response after the stop.
const GRACEFUL_CLOSE: Duration = Duration::from_secs(5);

/// Answers one request. Handlers here are small and synchronous: they read shared state.
pub trait Service: Send + Sync + 'static {
    /// The response to `req` (the body is not read: none of these endpoints take one).
    fn handle(&self, req: &http::request::Parts) -> Response;
}

/// Serves `service` on `listener` until `stop` fires.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    service: Arc<dyn Service>,
    stop: CancellationToken,
) {
    info!(server = name, addr = ?listener.local_addr().ok(), "http server started");
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            res = listener.accept() => res,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                warn!(server = name, error = %e, "accept failed");
                // EMFILE and friends: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let service = service.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<Incoming>| {
                let (parts, _body) = req.into_parts();
                let resp = service.handle(&parts);
                debug!(server = name, %peer, method = %parts.method, uri = %parts.uri, status = %resp.status(), "request");
                std::future::ready(Ok::<_, Infallible>(resp))
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let res = tokio::select! {
                res = conn.as_mut() => res,
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    tokio::time::timeout(GRACEFUL_CLOSE, conn).await.unwrap_or(Ok(()))
                }
            };
            if let Err(e) = res {
                debug!(server = name, %peer, error = %e, "http connection ended with an error");
            }
        });
    }
    debug!(server = name, "http server stopped accepting");
}

/// A `text/plain` response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response {
    with_type(status, "text/plain; charset=utf-8", body)
}

/// A response with an explicit content type.
pub fn with_type(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response {
    let mut resp = http::Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// 404 for an unknown path.
pub fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "not found\n")
}

/// 405 for a known path with the wrong method.
pub fn method_not_allowed() -> Response {
    text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
}

/// The value of query parameter `key`, percent-decoded (`+` is a space).
pub fn query_param(uri: &http::Uri, key: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_decoded() {
        let uri: http::Uri = "/logging?x=1&level=a%3Adebug%2Cb:info".parse().unwrap();
        assert_eq!(
            query_param(&uri, "level").as_deref(),
            Some("a:debug,b:info")
        );
        assert_eq!(query_param(&uri, "x").as_deref(), Some("1"));
        assert_eq!(query_param(&uri, "y"), None);
        let uri: http::Uri = "/p?level=100%".parse().unwrap();
        assert_eq!(query_param(&uri, "level").as_deref(), Some("100%"));
    }
}
