use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::*;
use crate::identity::{BoxFuture, LocalCa};

fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", "default", sa)
}

/// A scripted CA: certificates valid from "now" (per the shared clock) for `lifetime`,
/// serial = fetch number. Records when each fetch happened.
struct FakeSource {
    clock: Clock,
    lifetime: Duration,
    /// Added to not_before (simulates a CA whose clock is ahead).
    skew: Mutex<Duration>,
    fail: AtomicBool,
    /// When set, fetches wait for `release` before answering.
    gated: AtomicBool,
    release: Notify,
    count: AtomicUsize,
    fetches: watch::Sender<Vec<Instant>>,
}

impl FakeSource {
    fn new(clock: Clock, lifetime: Duration) -> Arc<Self> {
        Arc::new(FakeSource {
            clock,
            lifetime,
            skew: Mutex::new(Duration::ZERO),
            fail: AtomicBool::new(false),
            gated: AtomicBool::new(false),
            release: Notify::new(),
            count: AtomicUsize::new(0),
            fetches: watch::channel(Vec::new()).0,
        })
    }

    /// Waits until at least `n` fetches started; returns their start times.
    async fn wait_fetches(&self, n: usize) -> Vec<Instant> {
        let mut rx = self.fetches.subscribe();
        rx.wait_for(|f| f.len() >= n).await.unwrap().clone()
    }

    fn fetch_count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

impl CertificateSource for FakeSource {
    fn fetch<'a>(
        &'a self,
        id: &'a Identity,
    ) -> BoxFuture<'a, Result<WorkloadCertificate, IdentityError>> {
        Box::pin(async move {
            let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
            self.fetches.send_modify(|f| f.push(Instant::now()));
            if self.gated.load(Ordering::SeqCst) {
                self.release.notified().await;
            }
            if self.fail.load(Ordering::SeqCst) {
                return Err(IdentityError::Other("ca down".into()));
            }
            let not_before = self.clock.now() + *self.skew.lock().unwrap();
            Ok(WorkloadCertificate {
                identity: id.clone(),
                chain: Vec::new(),
                key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(Vec::new())),
                roots: Vec::new(),
                not_before,
                not_after: not_before + self.lifetime,
                serial: n.to_string(),
            })
        })
    }
}

/// Waits until the manager publishes a state matching `f`.
async fn wait_state(mgr: &CertManager, id: &Identity, f: impl Fn(&CertState) -> bool) {
    let mut rx = mgr.subscribe(id).unwrap();
    rx.wait_for(|s| f(s)).await.unwrap();
}

fn serial_is(s: &CertState, serial: &str) -> bool {
    matches!(s, CertState::Available(c) if c.serial == serial)
}

fn between(d: Duration, lo_ms: u64, hi_ms: u64) -> bool {
    d >= Duration::from_millis(lo_ms) && d <= Duration::from_millis(hi_ms)
}

#[tokio::test(start_paused = true)]
async fn refreshes_at_half_life() {
    let clock = Clock::tokio();
    let src = FakeSource::new(clock, Duration::from_secs(600));
    let mgr = CertManager::with_clock(src.clone(), clock);
    let start = Instant::now();

    let first = mgr.fetch_certificate(&id("a")).await.unwrap();
    assert_eq!(first.serial, "1");
    // Served from cache.
    let again = mgr.fetch_certificate(&id("a")).await.unwrap();
    assert!(Arc::ptr_eq(&first, &again));
    assert_eq!(src.fetch_count(), 1);

    wait_state(&mgr, &id("a"), |s| serial_is(s, "2")).await;
    let fetches = src.wait_fetches(2).await;
    assert!(
        between(fetches[1] - start, 300_000, 300_010),
        "{:?}",
        fetches[1] - start
    );
    assert_eq!(mgr.fetch_certificate(&id("a")).await.unwrap().serial, "2");

    // And again half-way through the new certificate.
    wait_state(&mgr, &id("a"), |s| serial_is(s, "3")).await;
    let fetches = src.wait_fetches(3).await;
    assert!(between(fetches[2] - fetches[1], 300_000, 300_010));
}

#[tokio::test(start_paused = true)]
async fn failed_refresh_backs_off_and_keeps_valid_cert() {
    let clock = Clock::tokio();
    let src = FakeSource::new(clock, Duration::from_secs(600));
    let mgr = CertManager::with_clock(src.clone(), clock);

    assert_eq!(mgr.fetch_certificate(&id("a")).await.unwrap().serial, "1");
    src.fail.store(true, Ordering::SeqCst);

    let fetches = src.wait_fetches(5).await;
    // Refresh at 300 s failed, then retries at ~0.5 s, 1 s, 2 s (±20 %).
    for (i, (lo, hi)) in [(400, 600), (800, 1200), (1600, 2400)]
        .into_iter()
        .enumerate()
    {
        let gap = fetches[i + 2] - fetches[i + 1];
        assert!(between(gap, lo, hi), "retry {i}: {gap:?}");
    }
    // Callers still get the old, valid certificate.
    assert_eq!(mgr.fetch_certificate(&id("a")).await.unwrap().serial, "1");

    src.fail.store(false, Ordering::SeqCst);
    wait_state(&mgr, &id("a"), |s| serial_is(s, "6")).await;
    assert_eq!(mgr.fetch_certificate(&id("a")).await.unwrap().serial, "6");
}

#[tokio::test(start_paused = true)]
async fn retries_no_later_than_expiry_then_reports_error() {
    let clock = Clock::tokio();
    let src = FakeSource::new(clock, Duration::from_secs(4));
    let mgr = CertManager::with_clock(src.clone(), clock);
    let start = Instant::now();

    mgr.fetch_certificate(&id("a")).await.unwrap();
    src.fail.store(true, Ordering::SeqCst);
    wait_state(&mgr, &id("a"), |s| matches!(s, CertState::Unavailable(_))).await;
    let fetches = src.wait_fetches(1).await;
    // Initial fetch, refresh at 2 s, retries at ~2.5 s and ~3.5 s; the next (~5.5 s) is
    // pulled in to the expiry at 4 s, which fails too: only then is the certificate gone.
    assert_eq!(fetches.len(), 5, "{fetches:?}");
    assert!(between(*fetches.last().unwrap() - start, 4000, 4010));

    let err = mgr.fetch_certificate(&id("a")).await.unwrap_err();
    assert!(matches!(err, IdentityError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("ca down"), "{err}");

    src.fail.store(false, Ordering::SeqCst);
    wait_state(&mgr, &id("a"), |s| matches!(s, CertState::Available(_))).await;
    mgr.fetch_certificate(&id("a")).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn first_fetch_failure_is_returned() {
    let clock = Clock::tokio();
    let src = FakeSource::new(clock, Duration::from_secs(600));
    src.fail.store(true, Ordering::SeqCst);
    let mgr = CertManager::with_clock(src.clone(), clock);

    let err = mgr.fetch_certificate(&id("a")).await.unwrap_err();
    assert!(err.to_string().contains("ca down"), "{err}");
    assert!(mgr.dump()[0].state.starts_with("Unavailable: "));

    // The background task keeps retrying with backoff and recovers on its own.
    src.fail.store(false, Ordering::SeqCst);
    wait_state(&mgr, &id("a"), |s| matches!(s, CertState::Available(_))).await;
    let fetches = src.wait_fetches(2).await;
    assert!(between(fetches[1] - fetches[0], 400, 600));
}

#[tokio::test(start_paused = true)]
async fn concurrent_callers_share_one_fetch() {
    let clock = Clock::tokio();
    let src = FakeSource::new(clock, Duration::from_secs(600));
    src.gated.store(true, Ordering::SeqCst);
    let mgr = CertManager::with_clock(src.clone(), clock);

    let callers: Vec<_> = (0..10)
        .map(|_| {
            let mgr = mgr.clone();
            tokio::spawn(async move { mgr.fetch_certificate(&id("a")).await })
        })
        .collect();
    src.wait_fetches(1).await;
    src.release.notify_one();
    let certs: Vec<_> = futures_util::future::join_all(callers)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    assert!(certs.iter().all(|c| Arc::ptr_eq(c, &certs[0])));
    assert_eq!(src.fetch_count(), 1);

    // A different identity gets its own certificate.
    src.gated.store(false, Ordering::SeqCst);
    let b = mgr.fetch_certificate(&id("b")).await.unwrap();
    assert_eq!(b.identity, id("b"));
    assert_eq!(src.fetch_count(), 2);
}

#[tokio::test(start_paused = true)]
async fn forget_stops_refreshing() {
    let clock = Clock::tokio();
    let src = FakeSource::new(clock, Duration::from_secs(600));
    let mgr = CertManager::with_clock(src.clone(), clock);

    mgr.fetch_certificate(&id("a")).await.unwrap();
    mgr.forget(&id("a"));
    assert!(mgr.dump().is_empty());
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert_eq!(src.fetch_count(), 1, "no refresh after forget");

    // Asking again starts over with a fresh fetch.
    assert_eq!(mgr.fetch_certificate(&id("a")).await.unwrap().serial, "2");
}

#[tokio::test(start_paused = true)]
async fn waiting_caller_sees_forget() {
    let clock = Clock::tokio();
    let src = FakeSource::new(clock, Duration::from_secs(600));
    src.gated.store(true, Ordering::SeqCst);
    let mgr = CertManager::with_clock(src.clone(), clock);

    let waiter = {
        let mgr = mgr.clone();
        tokio::spawn(async move { mgr.fetch_certificate(&id("a")).await })
    };
    src.wait_fetches(1).await;
    mgr.forget(&id("a"));
    let err = waiter.await.unwrap().unwrap_err();
    assert!(matches!(err, IdentityError::Forgotten(_)), "{err}");
}

#[tokio::test(start_paused = true)]
async fn not_yet_valid_cert_is_refreshed_at_once_then_backs_off() {
    let clock = Clock::tokio();
    let src = FakeSource::new(clock, Duration::from_secs(600));
    *src.skew.lock().unwrap() = Duration::from_secs(3600);
    let mgr = CertManager::with_clock(src.clone(), clock);

    mgr.fetch_certificate(&id("a")).await.unwrap();
    let fetches = src.wait_fetches(3).await;
    assert_eq!(fetches[1], fetches[0], "immediate refresh");
    assert!(between(fetches[2] - fetches[1], 400, 600), "then backoff");

    *src.skew.lock().unwrap() = Duration::ZERO;
    let n = src.fetch_count();
    wait_state(
        &mgr,
        &id("a"),
        |s| matches!(s, CertState::Available(c) if c.serial.parse::<usize>().unwrap() > n),
    )
    .await;
    // Back to the normal schedule: next fetch at half-life.
    let before = src.wait_fetches(n + 1).await[n];
    let next = src.wait_fetches(n + 2).await[n + 1];
    assert!(
        between(next - before, 300_000, 300_010),
        "{:?}",
        next - before
    );
}

/// Panics on its first fetch, then behaves.
struct PanicOnce(AtomicBool);

impl CertificateSource for PanicOnce {
    fn fetch<'a>(
        &'a self,
        id: &'a Identity,
    ) -> BoxFuture<'a, Result<WorkloadCertificate, IdentityError>> {
        Box::pin(async move {
            assert!(
                self.0.swap(true, Ordering::SeqCst),
                "first fetch panics (on purpose)"
            );
            Ok(WorkloadCertificate {
                identity: id.clone(),
                chain: Vec::new(),
                key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(Vec::new())),
                roots: Vec::new(),
                not_before: SystemTime::now(),
                not_after: SystemTime::now() + Duration::from_secs(600),
                serial: "ok".into(),
            })
        })
    }
}

#[tokio::test]
async fn dead_refresh_task_is_restarted() {
    let mgr = CertManager::new(Arc::new(PanicOnce(AtomicBool::new(false))));
    mgr.fetch_certificate(&id("a")).await.unwrap_err();
    assert_eq!(mgr.fetch_certificate(&id("a")).await.unwrap().serial, "ok");
}

#[test]
fn backoff_doubles_with_jitter_up_to_cap() {
    let mut b = Backoff::default();
    let mut base = 500u64;
    for _ in 0..20 {
        let d = b.next_delay();
        let lo = (base as f64 * 0.8) as u64;
        let hi = ((base as f64 * 1.2) as u64).min(150_000);
        assert!(between(d, lo, hi), "{d:?} not within {lo}..{hi} ms");
        base = (base * 2).min(150_000);
    }
    b.reset();
    assert!(between(b.next_delay(), 400, 600));
}

#[tokio::test]
async fn dump_shows_real_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let ca =
        LocalCa::load_or_create(tmp.path(), "cluster.local", Duration::from_secs(3600)).unwrap();
    let mgr = CertManager::new(Arc::new(ca));
    let cert = mgr.fetch_certificate(&id("echo")).await.unwrap();

    let dump = mgr.dump();
    assert_eq!(dump.len(), 1);
    let d = &dump[0];
    assert_eq!(d.identity, id("echo"));
    assert_eq!(d.state, "Available");
    assert_eq!(d.cert_chain.len(), 1);
    assert_eq!(d.root_certs.len(), 1);
    assert_eq!(d.cert_chain[0].serial_number, cert.serial);
    assert_eq!(
        d.cert_chain[0].expiration_time,
        x509::rfc3339(cert.not_after)
    );
    assert_eq!(d.cert_chain[0].valid_from, x509::rfc3339(cert.not_before));
    assert!(
        d.root_certs[0]
            .pem
            .starts_with("-----BEGIN CERTIFICATE-----\n")
    );

    let json = serde_json::to_value(&dump).unwrap();
    let entry = &json[0];
    assert_eq!(
        entry["identity"],
        "spiffe://cluster.local/ns/default/sa/echo"
    );
    for key in ["pem", "serialNumber", "validFrom", "expirationTime"] {
        assert!(entry["certChain"][0].get(key).is_some(), "missing {key}");
        assert!(entry["rootCerts"][0].get(key).is_some(), "missing {key}");
    }
    let valid_from = entry["certChain"][0]["validFrom"].as_str().unwrap();
    time::OffsetDateTime::parse(valid_from, &time::format_description::well_known::Rfc3339)
        .unwrap();
}
