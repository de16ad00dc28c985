//! Pool tests with a fake [`Connector`] that dials real HBONE echo servers over in-memory
//! transports and counts dials.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::HeaderMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::proxy::hbone::test_support::{duplex_echo_server, eventually};
use crate::proxy::hbone::{H2Settings, connect_request, handshake};

const IDLE: Duration = Duration::from_secs(300);

#[derive(Default)]
struct FakeConnector {
    settings: H2Settings,
    dials: AtomicUsize,
    /// Dials numbered here (1-based) fail.
    failing: Vec<usize>,
    /// When set, each dial announces itself and waits for a permit.
    gate: Option<(mpsc::UnboundedSender<()>, Arc<Semaphore>)>,
    /// One per successful dial, in order.
    conns: Mutex<Vec<Dialed>>,
}

struct Dialed {
    /// Cancel to make the server send GOAWAY.
    shutdown: CancellationToken,
    /// Completes when the server side of the connection ends.
    served: Option<JoinHandle<Result<(), HboneError>>>,
    /// A client handle for inspection (keeps the connection open while held).
    client: Option<H2Client>,
}

impl FakeConnector {
    fn dials(&self) -> usize {
        self.dials.load(Ordering::SeqCst)
    }

    /// The server token and client of the `n`th successful dial (0-based).
    fn conn(&self, n: usize) -> (CancellationToken, H2Client) {
        let conns = self.conns.lock().unwrap();
        let client = conns[n].client.clone().expect("client was forgotten");
        (conns[n].shutdown.clone(), client)
    }

    /// Drops the `n`th client handle and returns the server task of that connection.
    fn release(&self, n: usize) -> JoinHandle<Result<(), HboneError>> {
        let mut conns = self.conns.lock().unwrap();
        conns[n].client = None;
        conns[n].served.take().expect("server already taken")
    }
}

impl Connector for FakeConnector {
    fn connect<'a>(&'a self, _key: &'a WorkloadKey) -> BoxFuture<'a, Result<H2Client, HboneError>> {
        Box::pin(async move {
            let n = self.dials.fetch_add(1, Ordering::SeqCst) + 1;
            if let Some((started, permits)) = &self.gate {
                let _ = started.send(());
                permits.acquire().await.unwrap().forget();
            }
            if self.failing.contains(&n) {
                return Err(HboneError::Io(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    format!("dial {n} refused"),
                )));
            }
            let (io, server) = duplex_echo_server(&self.settings);
            let client = handshake(io, &self.settings).await?;
            self.conns.lock().unwrap().push(Dialed {
                shutdown: server.shutdown,
                served: Some(server.served),
                client: Some(client.clone()),
            });
            Ok(client)
        })
    }
}

fn key() -> WorkloadKey {
    WorkloadKey {
        src_id: Identity::new("cluster.local", "default", "client"),
        dst_id: vec![Identity::new("cluster.local", "default", "server")],
        dst: "10.0.0.5:15008".parse().unwrap(),
        src: "10.0.0.1".parse().unwrap(),
    }
}

fn req() -> http::Request<()> {
    connect_request("10.0.0.5:8080", HeaderMap::new()).unwrap()
}

async fn assert_echo(stream: &mut H2Stream, payload: &[u8]) {
    stream.write_all(payload).await.unwrap();
    let mut buf = vec![0u8; payload.len()];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(buf, payload);
}

#[tokio::test]
async fn concurrent_requests_share_one_dial() {
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    let permits = Arc::new(Semaphore::new(0));
    let connector = Arc::new(FakeConnector {
        gate: Some((started_tx, permits.clone())),
        ..Default::default()
    });
    let pool = Pool::new(connector.clone(), 100, IDLE);
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let (_, mut stream) = pool.send_request(&key(), req()).await.unwrap();
                assert_echo(&mut stream, format!("request {i}").as_bytes()).await;
                stream
            })
        })
        .collect();
    // Hold the dial until every request has queued.
    started_rx.recv().await.unwrap();
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    permits.add_permits(1);
    let mut streams = Vec::new();
    for task in tasks {
        streams.push(task.await.unwrap());
    }
    assert_eq!(connector.dials(), 1);
    let (_, client) = connector.conn(0);
    assert_eq!(client.active_streams(), 50);
    assert_eq!(pool.pooled_connections(), 1);
    drop(streams);
    assert_eq!(client.active_streams(), 0);
}

#[tokio::test]
async fn stream_cap_forces_a_second_connection() {
    let connector = Arc::new(FakeConnector::default());
    let pool = Pool::new(connector.clone(), 2, IDLE);
    let (_, mut first) = pool.send_request(&key(), req()).await.unwrap();
    assert_eq!(pool.pooled_connections(), 1);
    let (_, second) = pool.send_request(&key(), req()).await.unwrap();
    // Full: the first connection left the pool.
    assert_eq!((connector.dials(), pool.pooled_connections()), (1, 0));
    let (_, mut third) = pool.send_request(&key(), req()).await.unwrap();
    assert_eq!((connector.dials(), pool.pooled_connections()), (2, 1));
    assert_echo(&mut first, b"on the first connection").await;
    assert_echo(&mut third, b"on the second connection").await;
    drop((first, second));
    // The second connection has room again: no new dial.
    let (_, _fourth) = pool.send_request(&key(), req()).await.unwrap();
    assert_eq!(connector.dials(), 2);
}

#[tokio::test]
async fn peer_limit_lowers_the_cap() {
    // Our client cap is 1: the connection is full after one stream even though the pool
    // allows 100.
    let connector = Arc::new(FakeConnector {
        settings: H2Settings {
            max_streams_per_connection: 1,
            ..Default::default()
        },
        ..Default::default()
    });
    let pool = Pool::new(connector.clone(), 100, IDLE);
    let (_, _first) = pool.send_request(&key(), req()).await.unwrap();
    let (_, _second) = pool.send_request(&key(), req()).await.unwrap();
    assert_eq!(connector.dials(), 2);
}

#[tokio::test]
async fn goaway_connection_is_not_reused() {
    let connector = Arc::new(FakeConnector::default());
    let pool = Pool::new(connector.clone(), 100, IDLE);
    let (_, mut first) = pool.send_request(&key(), req()).await.unwrap();
    let (server, client) = connector.conn(0);
    server.cancel();
    eventually("client sees GOAWAY", || !client.is_ready()).await;

    let (_, mut second) = pool.send_request(&key(), req()).await.unwrap();
    assert_eq!(connector.dials(), 2);
    assert_eq!(pool.pooled_connections(), 1);
    // The draining connection still serves its open stream.
    assert_echo(&mut first, b"draining").await;
    assert_echo(&mut second, b"fresh").await;
}

#[tokio::test]
async fn closed_connection_is_not_reused() {
    let connector = Arc::new(FakeConnector::default());
    let pool = Pool::new(connector.clone(), 100, IDLE);
    drop(pool.send_request(&key(), req()).await.unwrap());
    let (server, client) = connector.conn(0);
    drop(client);
    let served = connector.release(0);
    server.cancel();
    // No stream open: the server closes the connection.
    served.await.unwrap().unwrap();
    let (_, mut stream) = pool.send_request(&key(), req()).await.unwrap();
    assert_eq!(connector.dials(), 2);
    assert_echo(&mut stream, b"fresh").await;
}

#[tokio::test]
async fn failed_dial_reaches_waiters_and_next_request_dials_again() {
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    let permits = Arc::new(Semaphore::new(0));
    let connector = Arc::new(FakeConnector {
        failing: vec![1],
        gate: Some((started_tx, permits.clone())),
        ..Default::default()
    });
    let pool = Pool::new(connector.clone(), 100, IDLE);
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.send_request(&key(), req()).await.map(|_| ()) })
        })
        .collect();
    started_rx.recv().await.unwrap();
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    permits.add_permits(1);
    for task in tasks {
        let err = task.await.unwrap().unwrap_err();
        let HboneError::Dial { dst, source } = &err else {
            panic!("expected a dial error, got {err}");
        };
        assert_eq!(*dst, key().dst);
        assert!(source.to_string().contains("dial 1 refused"), "{err}");
    }
    assert_eq!(connector.dials(), 1);
    // Nobody is waiting any more: the key is forgotten.
    assert!(pool.inner.lock().keys.is_empty());

    permits.add_permits(1);
    let (_, mut stream) = pool.send_request(&key(), req()).await.unwrap();
    assert_eq!(connector.dials(), 2);
    assert_echo(&mut stream, b"second dial").await;
}

#[tokio::test]
async fn keys_do_not_share_connections() {
    let connector = Arc::new(FakeConnector::default());
    let pool = Pool::new(connector.clone(), 100, IDLE);
    let other = WorkloadKey {
        src: "10.0.0.2".parse().unwrap(),
        ..key()
    };
    let (_, _a) = pool.send_request(&key(), req()).await.unwrap();
    let (_, _b) = pool.send_request(&other, req()).await.unwrap();
    let (_, _c) = pool.send_request(&key(), req()).await.unwrap();
    assert_eq!(connector.dials(), 2);
    assert_eq!(pool.pooled_connections(), 2);
}

#[tokio::test(start_paused = true)]
async fn idle_connections_are_evicted_and_in_flight_streams_survive() {
    let connector = Arc::new(FakeConnector::default());
    let pool = Pool::new(connector.clone(), 100, IDLE);
    let (_, mut in_flight) = pool.send_request(&key(), req()).await.unwrap();
    assert_eq!(pool.pooled_connections(), 1);

    tokio::time::sleep(IDLE - Duration::from_secs(1)).await;
    assert_eq!(pool.pooled_connections(), 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(pool.pooled_connections(), 0);

    // Eviction only dropped the pool's reference.
    assert_echo(&mut in_flight, b"still flowing").await;
    let (_, mut fresh) = pool.send_request(&key(), req()).await.unwrap();
    assert_eq!(connector.dials(), 2);
    assert_echo(&mut fresh, b"new connection").await;

    // The evicted connection closes (cleanly) once its last stream ends.
    let served = connector.release(0);
    drop(in_flight);
    served.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn checkout_refreshes_idle_deadline() {
    let connector = Arc::new(FakeConnector::default());
    let pool = Pool::new(connector.clone(), 100, IDLE);
    for _ in 0..3 {
        drop(pool.send_request(&key(), req()).await.unwrap());
        tokio::time::sleep(IDLE / 2).await;
    }
    assert_eq!(connector.dials(), 1);
    assert_eq!(pool.pooled_connections(), 1);
    tokio::time::sleep(IDLE).await;
    assert_eq!(pool.pooled_connections(), 0);
    assert!(pool.inner.lock().keys.is_empty());
}
