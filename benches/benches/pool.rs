//! Pool checkout under contention: N tasks call `Pool::send_request` on one key at once, on
//! a 2-worker runtime. The connector hands out real HBONE connections over in-memory
//! transports (`mesh_benches::duplex`), so one iteration is N checkouts plus N CONNECT round
//! trips on HTTP/2, without TLS or sockets.
//!
//! - `reuse/<N>`: 100 streams per connection (the default). After the first iteration the
//!   pooled connection is reused; nothing is dialed.
//! - `dial_each/<N>`: `POOL_MAX_STREAMS_PER_CONNECTION=1`: every checkout fills its
//!   connection, so each one dials (an in-memory HTTP/2 handshake) and the connection closes
//!   when its stream ends.

use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::HeaderMap;
use mesh_benches::duplex::DuplexConnector;
use mesh_core::Identity;
use tokio::runtime::Runtime;
use ztunnel::proxy::hbone::{H2Settings, connect_request};
use ztunnel::proxy::pool::{Pool, WorkloadKey};

const IDLE: Duration = Duration::from_secs(300);

fn key() -> WorkloadKey {
    WorkloadKey {
        src_id: Identity::new("cluster.local", "frontend", "client"),
        dst_id: vec![Identity::new("cluster.local", "backend", "server")],
        dst: ([10, 0, 2, 2], 15008).into(),
        src: [10, 0, 1, 2].into(),
    }
}

fn runtime() -> Runtime {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => panic!("building the tokio runtime: {err}"),
    }
}

/// N concurrent `send_request`s on `key`; each stream is dropped once its 200 arrived.
async fn checkout_burst(pool: &Pool, key: &Arc<WorkloadKey>, n: usize) {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (pool, key) = (pool.clone(), key.clone());
            tokio::spawn(async move {
                let req = match connect_request("10.0.2.2:8080", HeaderMap::new()) {
                    Ok(req) => req,
                    Err(err) => panic!("building the CONNECT request: {err}"),
                };
                match pool.send_request(&key, req).await {
                    Ok((_, stream)) => drop(stream),
                    Err(err) => panic!("send_request failed: {err}"),
                }
            })
        })
        .collect();
    for task in tasks {
        if let Err(err) = task.await {
            std::panic::resume_unwind(err.into_panic());
        }
    }
}

fn checkout(c: &mut Criterion) {
    let rt = runtime();
    let key = Arc::new(key());
    let mut group = c.benchmark_group("pool_send_request");
    for (mode, max_streams, counts) in [
        ("reuse", 100u32, &[1usize, 8, 64][..]),
        ("dial_each", 1, &[1, 8][..]),
    ] {
        for &n in counts {
            let settings = H2Settings {
                max_streams_per_connection: max_streams,
                ..H2Settings::default()
            };
            let connector = Arc::new(DuplexConnector::new(settings));
            let pool = Pool::new(connector.clone(), max_streams, IDLE);
            // Warm up and check the mode does what it says.
            rt.block_on(checkout_burst(&pool, &key, n));
            let dials_before = connector.dials();
            rt.block_on(checkout_burst(&pool, &key, n));
            let dialed = connector.dials() - dials_before;
            if mode == "reuse" {
                assert_eq!(dialed, 0, "reuse/{n}: the pooled connection must be reused");
            } else {
                assert_eq!(dialed, n, "dial_each/{n}: every checkout must dial");
            }
            group.throughput(Throughput::Elements(n as u64));
            group.bench_with_input(BenchmarkId::new(mode, n), &n, |b, &n| {
                b.iter(|| rt.block_on(checkout_burst(&pool, &key, n)))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, checkout);
criterion_main!(benches);
