//! Gives freed heap memory back to the OS after a wave of connections closed.
//!
//! glibc's allocator keeps freed memory in its arenas: after 10,000 proxied connections
//! closed, a proxy's RSS stayed at its peak. Every proxied connection holds a
//! [`LiveConnection`] while its bytes are copied; once at least [`TRIM_AFTER_CLOSED`] of
//! them closed since the last peak (or all of them, after at least
//! [`TRIM_WHEN_IDLE_AFTER`]), one `malloc_trim(0)` runs on the blocking pool shortly after
//! ([`TRIM_DELAY`], so more of the wave is trimmed at once). Steady traffic never trims:
//! only a drop of that many live connections does.
//!
//! The other way round, glibc by default gives memory back too eagerly for a proxy: any
//! free chunk at the top of a heap above 128 KiB is returned at once, so the 64 KiB read
//! buffers of a busy tunnel were unmapped and faulted in again and again (page faults
//! were ~4% of the proxies' CPU in a bulk transfer). [`LiveConnection::new`] raises that
//! threshold once to [`TRIM_THRESHOLD`]; the explicit trims above still return the rest.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// Connections that must have closed since the peak before a trim.
const TRIM_AFTER_CLOSED: usize = 512;
/// Also trim when the last connection closed after at least this many were live.
const TRIM_WHEN_IDLE_AFTER: usize = 64;
/// Wait after the threshold is crossed, so more of the wave is closed too.
const TRIM_DELAY: Duration = Duration::from_millis(250);

static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Highest `LIVE` since the last trim.
static PEAK: AtomicUsize = AtomicUsize::new(0);
static TRIM_SCHEDULED: AtomicBool = AtomicBool::new(false);
/// glibc's `M_TRIM_THRESHOLD` (default 128 KiB): free memory at the top of a heap kept
/// for reuse instead of being returned at every free. Measured: ~15% less proxy CPU per
/// byte on a bulk transfer.
const TRIM_THRESHOLD: i32 = 4 * 1024 * 1024;
static TUNE_ALLOCATOR: std::sync::Once = std::sync::Once::new();

/// Counts one proxied connection as live until dropped.
#[derive(Debug)]
pub struct LiveConnection(());

impl LiveConnection {
    /// Counts a new live connection.
    pub fn new() -> Self {
        TUNE_ALLOCATOR.call_once(tune_allocator);
        let live = LIVE.fetch_add(1, Ordering::Relaxed) + 1;
        PEAK.fetch_max(live, Ordering::Relaxed);
        LiveConnection(())
    }
}

impl Default for LiveConnection {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for LiveConnection {
    fn drop(&mut self) {
        let live = LIVE.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        if wave_closed(PEAK.load(Ordering::Relaxed), live)
            && !TRIM_SCHEDULED.swap(true, Ordering::AcqRel)
        {
            schedule_trim();
        }
    }
}

/// Whether enough connections closed since the peak to be worth a trim.
fn wave_closed(peak: usize, live: usize) -> bool {
    let closed = peak.saturating_sub(live);
    closed >= TRIM_AFTER_CLOSED || (live == 0 && closed >= TRIM_WHEN_IDLE_AFTER)
}

fn schedule_trim() {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        TRIM_SCHEDULED.store(false, Ordering::Release);
        return;
    };
    runtime.spawn(async {
        tokio::time::sleep(TRIM_DELAY).await;
        PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
        if let Err(error) = tokio::task::spawn_blocking(trim).await {
            tracing::debug!(%error, "malloc_trim task failed");
        }
        TRIM_SCHEDULED.store(false, Ordering::Release);
    });
}

/// Keeps up to [`TRIM_THRESHOLD`] free at the top of each heap (glibc only).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it takes no pointers.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

/// Returns free heap pages to the OS (glibc only; a no-op elsewhere).
fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_only_after_a_wave_of_closes() {
        assert!(!wave_closed(0, 0));
        assert!(!wave_closed(10_000, 10_000 - TRIM_AFTER_CLOSED + 1));
        assert!(wave_closed(10_000, 10_000 - TRIM_AFTER_CLOSED));
        assert!(wave_closed(10_000, 0));
        // The tail of a wave: everything closed.
        assert!(wave_closed(TRIM_WHEN_IDLE_AFTER, 0));
        assert!(!wave_closed(TRIM_WHEN_IDLE_AFTER - 1, 0));
        // A live count above a stale peak (peak reset during a trim) is no wave.
        assert!(!wave_closed(5, 100));
    }

    #[tokio::test]
    async fn a_closing_wave_runs_one_trim() {
        let conns: Vec<_> = (0..TRIM_AFTER_CLOSED + 1)
            .map(|_| LiveConnection::new())
            .collect();
        drop(conns);
        // This test's own drops crossed the threshold.
        assert!(TRIM_SCHEDULED.load(Ordering::Acquire));
    }
}
