//! Processes started in a netns (`ztunnel` in a pod, `istiod-compat` in a node) and their
//! line-by-line logs.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use super::{
    LOG_READY, LocalConfig, OrPanic, Pod, READY_TIMEOUT, TRUST_DOMAIN, Topology, eventually, lock,
    nsenter,
};

impl Topology {
    /// Starts a dedicated-mode `ztunnel` in the pod's netns as the pod's workload and waits
    /// for `proxy ready`. `env` overrides or adds environment variables; an empty value
    /// removes the variable (every proxy variable treats empty as unset), e.g.
    /// `("LOCAL_XDS_PATH", "")` for a proxy fed by xDS only.
    pub fn start_ztunnel(&self, pod: &Pod, env: &[(&str, &str)]) -> ZtunnelProc {
        let Some(bin) = &self.ztunnel_bin else {
            panic!("Topology::with_ztunnel_bin was not called: no ztunnel binary to start");
        };
        if !self.local_config_path().exists() {
            self.write_local_config(&LocalConfig::new());
        }
        let mut cmd = nsenter(&pod.netns);
        cmd.arg(bin)
            .arg("proxy")
            .env("PROXY_MODE", "dedicated")
            .env("PROXY_WORKLOAD_INFO", pod.workload_info())
            .env("NODE_NAME", &pod.node)
            .env("LOCAL_XDS_PATH", self.local_config_path())
            .env("XDS_ADDRESS", "")
            .env("CA_ADDRESS", "")
            .env("LOCAL_CA_DIR", self.ca_dir())
            .env("TRUST_DOMAIN", TRUST_DOMAIN)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        for (key, value) in env {
            if value.is_empty() {
                cmd.env_remove(key);
            } else {
                cmd.env(key, value);
            }
        }
        let proc = LoggedProc::spawn(cmd, format!("ztunnel in pod {}", pod.name));
        proc.wait_for_log(LOG_READY, READY_TIMEOUT);
        proc
    }
}

/// The log of a [`LoggedProc`]: lines so far, and how many output streams are still open.
struct ProcLog {
    state: Mutex<LogState>,
    changed: Condvar,
}

struct LogState {
    lines: Vec<String>,
    open_streams: usize,
}

impl LoggedProc {
    /// Spawns `cmd` (stdin closed, stdout and stderr captured line by line). `label` names
    /// the process in panics and in the log printed on drop (`ztunnel in pod client`).
    pub fn spawn(mut cmd: Command, label: String) -> LoggedProc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .or_panic(|| format!("starting {label}: {cmd:?}"));
        let log = Arc::new(ProcLog {
            state: Mutex::new(LogState {
                lines: Vec::new(),
                open_streams: 2,
            }),
            changed: Condvar::new(),
        });
        if let Some(stdout) = child.stdout.take() {
            let log = Arc::clone(&log);
            thread::spawn(move || pump_lines(stdout, "", &log));
        }
        if let Some(stderr) = child.stderr.take() {
            let log = Arc::clone(&log);
            thread::spawn(move || pump_lines(stderr, "[stderr] ", &log));
        }
        LoggedProc {
            label,
            child: Mutex::new(child),
            log,
            log_in_panic: AtomicBool::new(false),
        }
    }
}

fn pump_lines(stream: impl Read, prefix: &str, log: &ProcLog) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = format!("{prefix}{}", strip_ansi(&String::from_utf8_lossy(&buf)));
                lock(&log.state).lines.push(line);
                log.changed.notify_all();
            }
        }
    }
    lock(&log.state).open_streams -= 1;
    log.changed.notify_all();
}

/// Drops ANSI colour sequences (`ESC [ … letter`) and the line end.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out.trim_end_matches(['\r', '\n']).to_owned()
}

/// A running process (in a netns); its output is kept line by line. Killed on drop, and its
/// log is printed if the test is panicking.
pub struct LoggedProc {
    label: String,
    child: Mutex<Child>,
    log: Arc<ProcLog>,
    /// A panic message already carries the log: don't print it again on drop.
    log_in_panic: AtomicBool,
}

/// A `ztunnel` started by [`Topology::start_ztunnel`].
pub type ZtunnelProc = LoggedProc;

impl LoggedProc {
    /// Number of log lines so far: pass it to [`LoggedProc::wait_for_log_since`] to wait
    /// only for lines logged after this point.
    pub fn log_mark(&self) -> usize {
        lock(&self.log.state).lines.len()
    }

    /// The whole log so far.
    pub fn log_text(&self) -> String {
        lock(&self.log.state).lines.join("\n")
    }

    /// Log lines logged after `mark` (see [`LoggedProc::log_mark`]).
    pub fn lines_since(&self, mark: usize) -> Vec<String> {
        let state = lock(&self.log.state);
        state.lines[mark.min(state.lines.len())..].to_vec()
    }

    /// Log lines (since the start) that contain `needle`.
    pub fn lines_containing(&self, needle: &str) -> Vec<String> {
        let state = lock(&self.log.state);
        state
            .lines
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// The first line after `mark` containing `needle`, waiting up to `timeout`; `None` on
    /// timeout or once the process closed its output without logging it.
    pub fn try_wait_for_log_since(
        &self,
        mark: usize,
        needle: &str,
        timeout: Duration,
    ) -> Option<String> {
        self.try_wait_for_line_since(mark, timeout, |line| line.contains(needle))
    }

    /// The first line after `mark` for which `matches` holds, waiting up to `timeout` (woken
    /// by each new line); `None` on timeout or once the process closed its output.
    pub fn try_wait_for_line_since(
        &self,
        mark: usize,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.log.state);
        loop {
            let from = mark.min(state.lines.len());
            if let Some(line) = state.lines[from..].iter().find(|l| matches(l)) {
                return Some(line.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if state.open_streams == 0 || left.is_zero() {
                return None;
            }
            state = self
                .log
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Like [`LoggedProc::try_wait_for_log_since`], but panics with the log on failure.
    pub fn wait_for_log_since(&self, mark: usize, needle: &str, timeout: Duration) -> String {
        match self.try_wait_for_log_since(mark, needle, timeout) {
            Some(line) => line,
            None => {
                self.log_in_panic.store(true, Ordering::Relaxed);
                panic!(
                    "{} {} without logging `{needle}` (waited up to {timeout:?}); its log:\n{}",
                    self.label,
                    match self.exit_status() {
                        Some(status) => format!("exited ({status})"),
                        None => "is running".to_owned(),
                    },
                    self.log_text()
                )
            }
        }
    }

    /// Waits for a line containing `needle` anywhere in the log; panics with the log on
    /// timeout or if the process exits first.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for_log_since(0, needle, timeout)
    }

    /// Exit status if the process has ended (waits briefly when its output is closed).
    pub fn exit_status(&self) -> Option<std::process::ExitStatus> {
        let output_closed = lock(&self.log.state).open_streams == 0;
        let mut child = lock(&self.child);
        let patience = if output_closed {
            Duration::from_secs(2)
        } else {
            Duration::ZERO
        };
        let mut status = None;
        eventually(patience, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }

    /// Whether the process still runs.
    pub fn is_running(&self) -> bool {
        matches!(lock(&self.child).try_wait(), Ok(None))
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        lock(&self.child).id()
    }

    /// Sends SIGKILL (no graceful shutdown) and waits until the process is gone.
    pub fn kill(&self) {
        let mut child = lock(&self.child);
        child
            .kill()
            .or_panic(|| format!("sending SIGKILL to {}", self.label));
        child
            .wait()
            .or_panic(|| format!("waiting for {} to exit", self.label));
    }
}

impl Drop for LoggedProc {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(PoisonError::into_inner);
        let _ = child.kill();
        let _ = child.wait();
        if thread::panicking() && !self.log_in_panic.load(Ordering::Relaxed) {
            eprintln!(
                "----- log of {} -----\n{}\n-----",
                self.label,
                self.log_text()
            );
        }
    }
}
