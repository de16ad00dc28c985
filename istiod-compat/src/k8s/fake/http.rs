//! The fake apiserver's HTTP side: hyper 1 HTTP/1.1 on a loopback listener, routing
//! Kubernetes REST paths to [`State`](super::state::State).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::selector::FieldSelector;
use super::state::{ApiError, PatchKind, ResourceDef, WatchStart, find_def};
use super::{Delivery, Inner, RequestRecord};

type Body = BoxBody<Bytes, Infallible>;

/// Default watch duration when the client gives no `timeoutSeconds`.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

pub(super) async fn serve(listener: TcpListener, inner: Arc<Inner>) {
    loop {
        let accepted = tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else { continue };
        let inner = inner.clone();
        tokio::spawn(async move {
            let shutdown = inner.shutdown.clone();
            let service = service_fn(move |req| handle(inner.clone(), req));
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

/// A parsed Kubernetes REST path.
#[derive(Debug, PartialEq, Eq)]
struct Route<'a> {
    group: &'a str,
    version: &'a str,
    plural: &'a str,
    namespace: Option<&'a str>,
    name: Option<&'a str>,
}

fn parse_route(path: &str) -> Option<Route<'_>> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (plural, namespace, name) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, None, Some(*name)),
        ["namespaces", ns, plural] => (*plural, Some(*ns), None),
        ["namespaces", ns, plural, name] => (*plural, Some(*ns), Some(*name)),
        _ => return None,
    };
    Some(Route {
        group,
        version,
        plural,
        namespace,
        name,
    })
}

async fn handle(inner: Arc<Inner>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let raw_query = req.uri().query().unwrap_or("").to_string();
    let query: HashMap<String, String> = form_urlencoded::parse(raw_query.as_bytes())
        .into_owned()
        .collect();
    let watch = query.get("watch").is_some_and(|v| v == "true" || v == "1");
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let route = parse_route(&path);
    let resource = route.as_ref().map(|r| r.plural).unwrap_or("").to_string();

    let response = match inner.take_fault(&method, &resource, watch) {
        Some(code) => error(&ApiError::new(code, format!("injected fault {code}"))),
        None => match req.into_body().collect().await {
            Err(e) => error(&ApiError::new(400, format!("reading body: {e}"))),
            Ok(body) => {
                let body = body.to_bytes();
                match route {
                    None => page_not_found(),
                    Some(route) => {
                        dispatch(&inner, &method, &route, &query, watch, &content_type, &body)
                    }
                }
            }
        },
    };
    inner.record(RequestRecord {
        method: method.to_string(),
        path,
        query: raw_query,
        resource,
        watch,
        status: response.status().as_u16(),
    });
    Ok(response)
}

fn dispatch(
    inner: &Arc<Inner>,
    method: &Method,
    route: &Route<'_>,
    query: &HashMap<String, String>,
    watch: bool,
    content_type: &str,
    body: &[u8],
) -> Response<Body> {
    if route.group == "authentication.k8s.io" && route.plural == "tokenreviews" {
        return match (method, route.namespace, route.name) {
            (&Method::POST, None, None) => token_review(inner, body),
            _ => error(&ApiError::new(405, "tokenreviews only support create")),
        };
    }
    let Some(def) = find_def(route.group, route.version, route.plural) else {
        return page_not_found();
    };
    if def.crd && !inner.lock().crds_installed {
        // What a real apiserver answers for the path of a CRD that is not installed.
        return page_not_found();
    }
    if !def.namespaced && route.namespace.is_some() {
        return page_not_found();
    }
    if def.namespaced
        && route.namespace.is_none()
        && (route.name.is_some() || *method != Method::GET)
    {
        return page_not_found();
    }
    let namespace = route.namespace.unwrap_or("");
    let result = match (method, route.name) {
        (&Method::GET, None) if watch => return start_watch(inner, def, route.namespace, query),
        (&Method::GET, None) => list(inner, def, route.namespace, query),
        (&Method::GET, Some(name)) => inner.lock().get(def, namespace, name).map(ok),
        (&Method::POST, None) => parse_json(body).and_then(|obj| {
            inner
                .lock()
                .create(def, namespace, obj)
                .map(|v| (StatusCode::CREATED, v))
        }),
        (&Method::PUT, Some(name)) => {
            parse_json(body).and_then(|obj| inner.lock().replace(def, namespace, name, obj).map(ok))
        }
        (&Method::PATCH, Some(name)) => patch_kind(content_type).and_then(|kind| {
            parse_json(body).and_then(|patch| {
                inner
                    .lock()
                    .patch(def, namespace, name, &patch, kind)
                    .map(ok)
            })
        }),
        (&Method::DELETE, Some(name)) => inner.lock().delete(def, namespace, name).map(ok),
        _ => Err(ApiError::new(
            405,
            format!("{method} is not supported here"),
        )),
    };
    match result {
        Ok((code, value)) => json_response(code, &value),
        Err(e) => error(&e),
    }
}

fn ok(value: Value) -> (StatusCode, Value) {
    (StatusCode::OK, value)
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    // Apply patches are YAML on the wire; kube sends them as JSON, which YAML includes.
    serde_json::from_slice(body).map_err(|e| ApiError::new(400, format!("body is not JSON: {e}")))
}

fn patch_kind(content_type: &str) -> Result<PatchKind, ApiError> {
    let media = content_type.split(';').next().unwrap_or("").trim();
    match media {
        "application/apply-patch+yaml" => Ok(PatchKind::Apply),
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
            Ok(PatchKind::Merge)
        }
        other => Err(ApiError::new(
            415,
            format!("the fake apiserver does not support patch type {other:?}"),
        )),
    }
}

/// Label selectors are not implemented: refuse them loudly rather than answer unfiltered.
/// Returns the field selector.
fn check_unsupported(
    def: &ResourceDef,
    query: &HashMap<String, String>,
) -> Result<FieldSelector, ApiError> {
    if query.get("labelSelector").is_some_and(|v| !v.is_empty()) {
        return Err(ApiError::new(
            400,
            "the fake apiserver does not support labelSelector",
        ));
    }
    if query.get("sendInitialEvents").is_some_and(|v| v == "true") {
        return Err(ApiError::new(
            400,
            "the fake apiserver does not support streaming lists",
        ));
    }
    FieldSelector::parse(def, query.get("fieldSelector").map(String::as_str))
}

fn list(
    inner: &Arc<Inner>,
    def: &ResourceDef,
    namespace: Option<&str>,
    query: &HashMap<String, String>,
) -> Result<(StatusCode, Value), ApiError> {
    let selector = check_unsupported(def, query)?;
    // `limit` is ignored: everything comes in one page without a continue token, which
    // clients must accept.
    let (mut items, rv) = inner.lock().list(def, namespace);
    items.retain(|item| selector.matches(item));
    for item in &items {
        inner.deliver(Delivery::of(def.plural, "LIST", item));
    }
    Ok(ok(json!({
        "apiVersion": def.api_version(),
        "kind": format!("{}List", def.kind),
        "metadata": { "resourceVersion": rv.to_string() },
        "items": items,
    })))
}

fn start_watch(
    inner: &Arc<Inner>,
    def: &'static ResourceDef,
    namespace: Option<&str>,
    query: &HashMap<String, String>,
) -> Response<Body> {
    let selector = match check_unsupported(def, query) {
        Ok(selector) => selector,
        Err(e) => return error(&e),
    };
    let from = match query.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(rv) => match rv.parse::<u64>() {
            Ok(rv) => Some(rv),
            Err(_) => return error(&ApiError::new(400, format!("bad resourceVersion {rv:?}"))),
        },
    };
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true" || v == "1");
    let mut timeout = query
        .get("timeoutSeconds")
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_WATCH_TIMEOUT);
    if let Some(cap) = inner.max_watch_timeout {
        timeout = timeout.min(cap);
    }
    let start = inner.lock().watch(def, namespace, &selector, from);
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    match start {
        Ok(start) => {
            let namespace = namespace.map(str::to_string);
            let disconnect = inner.disconnect.subscribe();
            let watch = Watch {
                resource: def.plural,
                namespace,
                selector,
                bookmarks,
                timeout,
                disconnect,
            };
            tokio::spawn(pump(inner.clone(), start, watch, tx));
        }
        // Like the apiserver: a 200 stream carrying one ERROR event.
        Err(e) if e.code == 410 => {
            let line = format!(
                "{}\n",
                json!({ "type": "ERROR", "object": e.status_json() })
            );
            if tx.try_send(Bytes::from(line)).is_err() {
                return error(&ApiError::new(500, "watch stream closed"));
            }
        }
        Err(e) => return error(&e),
    }
    let stream = ReceiverStream::new(rx).map(|chunk| Ok::<_, Infallible>(Frame::data(chunk)));
    respond(
        StatusCode::OK,
        "application/json",
        BodyExt::boxed(StreamBody::new(stream)),
    )
}

/// One open watch's parameters.
struct Watch {
    resource: &'static str,
    namespace: Option<String>,
    selector: FieldSelector,
    bookmarks: bool,
    timeout: Duration,
    disconnect: tokio::sync::watch::Receiver<u64>,
}

/// Feeds one watch: initial events, then live ones, until the timeout, a disconnect, the
/// client going away or shutdown.
async fn pump(inner: Arc<Inner>, start: WatchStart, watch: Watch, tx: mpsc::Sender<Bytes>) {
    let WatchStart {
        initial,
        from,
        mut rx,
    } = start;
    let Watch {
        resource,
        namespace,
        selector,
        bookmarks,
        timeout,
        mut disconnect,
    } = watch;
    for line in initial {
        record_delivery(&inner, resource, &line);
        if tx.send(line).await.is_err() {
            return;
        }
    }
    let deadline = tokio::time::sleep(timeout);
    let mut deadline = std::pin::pin!(deadline);
    loop {
        // Biased towards pending events: a disconnect or timeout delivers what was already
        // sent first (deterministic for tests, e.g. a bookmark right before a disconnect).
        let record = tokio::select! {
            biased;
            record = rx.recv() => record,
            _ = &mut deadline => return,
            _ = inner.shutdown.cancelled() => return,
            _ = disconnect.changed() => return,
        };
        let line = match record {
            Ok(record) if record.bookmark => {
                if !bookmarks {
                    continue;
                }
                record.line.clone()
            }
            Ok(record) => {
                let in_ns = namespace.as_deref().is_none_or(|ns| ns == record.namespace);
                if record.rv <= from || !in_ns {
                    continue;
                }
                let Some(line) = selector.watch_line(&record) else {
                    continue;
                };
                record_delivery(&inner, resource, &line);
                line
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                let e = ApiError::new(410, "watch fell behind");
                let line = format!(
                    "{}\n",
                    json!({ "type": "ERROR", "object": e.status_json() })
                );
                let _ = tx.send(Bytes::from(line)).await;
                return;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if tx.send(line).await.is_err() {
            return;
        }
    }
}

/// Notes the object of a watch event line for [`super::FakeApiServer::deliveries`].
fn record_delivery(inner: &Inner, resource: &str, line: &Bytes) {
    if let Ok(event) = serde_json::from_slice::<Value>(line)
        && let Some(kind) = event["type"].as_str()
    {
        inner.deliver(Delivery::of(resource, kind, &event["object"]));
    }
}

fn token_review(inner: &Arc<Inner>, body: &[u8]) -> Response<Body> {
    let review = match parse_json(body) {
        Ok(review) => review,
        Err(e) => return error(&e),
    };
    let token = review["spec"]["token"].as_str().unwrap_or("");
    let mut requested: Vec<String> = review["spec"]["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if requested.is_empty() {
        // No audiences requested: the apiserver's own.
        requested.push(super::API_AUDIENCE.to_string());
    }
    let entry = inner.lock().tokens.get(token).cloned();
    let status = match entry {
        None => json!({ "authenticated": false, "user": {}, "error": "invalid bearer token" }),
        Some(entry) => {
            let matched: Vec<&String> = requested
                .iter()
                .filter(|a| entry.audiences.contains(a))
                .collect();
            if matched.is_empty() {
                json!({
                    "authenticated": false,
                    "user": {},
                    "error": format!(
                        "token audiences {:?} is invalid for the target audiences {:?}",
                        entry.audiences, requested
                    ),
                })
            } else {
                let mut groups = vec!["system:authenticated".to_string()];
                if let Some(rest) = entry.username.strip_prefix("system:serviceaccount:") {
                    let ns = rest.split(':').next().unwrap_or("");
                    groups.insert(0, format!("system:serviceaccounts:{ns}"));
                    groups.insert(0, "system:serviceaccounts".to_string());
                }
                json!({
                    "authenticated": true,
                    "user": {
                        "username": entry.username,
                        "uid": format!("uid-{}", entry.username),
                        "groups": groups,
                        "extra": entry.extras,
                    },
                    "audiences": matched,
                })
            }
        }
    };
    json_response(
        StatusCode::CREATED,
        &json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "metadata": {},
            "spec": review["spec"],
            "status": status,
        }),
    )
}

fn respond(code: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    respond(code, "application/json", full(value.to_string()))
}

fn error(e: &ApiError) -> Response<Body> {
    let code = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(code, &e.status_json())
}

/// A bare 404 like the apiserver's mux gives for unknown paths (not a `Status`).
fn page_not_found() -> Response<Body> {
    respond(
        StatusCode::NOT_FOUND,
        "text/plain",
        full("404 page not found\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let r = |group, version, plural, namespace, name| {
            Some(Route {
                group,
                version,
                plural,
                namespace,
                name,
            })
        };
        assert_eq!(parse_route("/api/v1/pods"), r("", "v1", "pods", None, None));
        assert_eq!(
            parse_route("/api/v1/namespaces/foo"),
            r("", "v1", "namespaces", None, Some("foo"))
        );
        assert_eq!(
            parse_route("/api/v1/namespaces/ns/secrets/s"),
            r("", "v1", "secrets", Some("ns"), Some("s"))
        );
        assert_eq!(
            parse_route("/apis/security.istio.io/v1/namespaces/ns/authorizationpolicies"),
            r(
                "security.istio.io",
                "v1",
                "authorizationpolicies",
                Some("ns"),
                None
            )
        );
        assert_eq!(parse_route("/api/v1/namespaces/ns/pods/p/status"), None);
        assert_eq!(parse_route("/healthz"), None);
    }
}
