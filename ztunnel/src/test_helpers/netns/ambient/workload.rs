//! Pod processes for the ambient harness: each one is a real process started inside the pod's
//! netns AND the pod's cgroup (before it creates any socket), the way a container runtime
//! starts a container. The cgroup matters: the eBPF capture programs are attached to the
//! node's cgroup, so only processes inside it are captured.
//!
//! The apps know nothing about the mesh: a `perl` echo server (perl-base, always on Debian)
//! that prints the peer address of every connection it accepts, and `bash` clients using
//! `/dev/tcp` (a plain `connect`).

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::Duration;

use super::super::{LoggedProc, OrPanic, PATIENCE, Pod, READY_TIMEOUT};
use super::AmbientPod;

/// The echo server: binds `0.0.0.0:<port>`, says `listening`, and for each connection prints
/// `accepted <peer ip>:<peer port>` and echoes bytes until EOF (one child per connection).
const ECHO_SERVER: &str = r#"
use strict; use IO::Socket::INET;
$| = 1; $SIG{CHLD} = 'IGNORE';
my $l = IO::Socket::INET->new(LocalAddr => '0.0.0.0', LocalPort => $ARGV[0], Listen => 128,
    ReuseAddr => 1, Proto => 'tcp') or die "listen on port $ARGV[0]: $!\n";
print "listening\n";
while (1) {
    my $c = $l->accept or next;
    print 'accepted ', $c->peerhost, ':', $c->peerport, "\n";
    my $pid = fork;
    if (defined $pid && $pid == 0) {
        close $l; my $buf;
        while (my $n = sysread($c, $buf, 65536)) { syswrite($c, $buf, $n) or last; }
        exit 0;
    }
    close $c;
}
"#;

/// One request: connect to `$1:$2`, send `$3` and a newline, print the line that comes back.
/// Exit 3: connect failed; exit 4: no line came back (closed, reset or 10 s passed).
const ONE_REQUEST: &str = r#"
exec 3<>"/dev/tcp/$1/$2" || exit 3
printf '%s\n' "$3" >&3
IFS= read -r -t 10 reply <&3 || exit 4
printf '%s\n' "$reply"
"#;

/// A long-lived client driven over stdin, one command per line, one answer line each:
/// `new IP PORT MSG` (a fresh connection, one line echoed, closed), `open IP PORT` (keeps
/// connection fd 4 open), `send MSG` (over fd 4), `close`. Answers start with `ok ` or `err `.
const SHELL: &str = r#"
echo ready
while IFS=' ' read -r cmd a b c; do
  case "$cmd" in
    new)
      if exec 3<>"/dev/tcp/$a/$b"; then
        printf '%s\n' "$c" >&3
        if IFS= read -r -t 10 reply <&3; then echo "ok $reply"; else echo "err no reply"; fi
        exec 3<&- 3>&-
      else echo "err connect"; fi ;;
    open)
      if exec 4<>"/dev/tcp/$a/$b"; then echo "ok open"; else echo "err connect"; fi ;;
    send)
      if printf '%s\n' "$a" >&4 2>/dev/null && IFS= read -r -t 10 reply <&4; then
        echo "ok $reply"; else echo "err no reply"; fi ;;
    close) exec 4<&- 4>&-; echo "ok closed" ;;
    *) echo "err unknown command $cmd" ;;
  esac
done
"#;

/// `nsenter --net=<netns> -- sh -c 'echo $$ > <cgroup>/cgroup.procs && exec "$@"' <program>`:
/// the process joins the cgroup before it execs the program, so every socket the program
/// creates belongs to the cgroup. Append the program's arguments with `.arg(..)`.
pub(super) fn in_netns_and_cgroup(netns: &Path, cgroup: &Path, program: &Path) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns.display()))
        .arg("--")
        .arg("sh")
        .arg("-c")
        .arg(r#"echo $$ > "$0" && exec "$@""#)
        .arg(cgroup.join("cgroup.procs"))
        .arg(program);
    cmd
}

impl AmbientPod {
    /// A command running `program` as one of the pod's processes (its netns and cgroup).
    pub fn command(&self, program: impl AsRef<Path>) -> Command {
        in_netns_and_cgroup(&self.pod.netns_path(), &self.cgroup, program.as_ref())
    }

    /// Starts the echo server on `0.0.0.0:port` as a process of the pod and waits until it
    /// listens.
    pub fn start_echo_server(&self, port: u16) -> PodEchoServer {
        let mut cmd = self.command("perl");
        cmd.arg("-e").arg(ECHO_SERVER).arg(port.to_string());
        let proc = LoggedProc::spawn(cmd, format!("echo server in pod {}", self.pod.name));
        proc.wait_for_log("listening", READY_TIMEOUT);
        PodEchoServer {
            addr: self.pod.addr(port),
            proc,
        }
    }

    /// One plain request from a fresh `bash` process of the pod: connect to `dst`, send
    /// `message` (one line, no newline inside), return the line echoed back, or why not.
    pub fn request(&self, dst: SocketAddr, message: &str) -> Result<String, String> {
        // bash's read gives up after 10 s (exit 4); `timeout` only ends a hanging connect.
        let mut cmd = self.command("timeout");
        cmd.arg((PATIENCE.as_secs() + 5).to_string())
            .args(["bash", "-c", ONE_REQUEST, "bash"])
            .arg(dst.ip().to_string())
            .arg(dst.port().to_string())
            .arg(message);
        let out = cmd
            .output()
            .or_panic(|| format!("running a client in pod {}", self.pod.name));
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if out.status.success() {
            return Ok(stdout);
        }
        let why = match out.status.code() {
            Some(3) => "connect failed",
            Some(4) => "no reply line (closed, reset or timed out)",
            Some(124) => "connect hung (no SYN-ACK?) and timed out",
            _ => "failed",
        };
        Err(format!(
            "{} -> {dst}: {why} ({}); stderr: {}",
            self.pod.name,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }

    /// Like [`AmbientPod::request`], but panics unless `message` comes back unchanged.
    pub fn expect_echo(&self, dst: SocketAddr, message: &str) {
        match self.request(dst, message) {
            Ok(reply) if reply == message => {}
            Ok(reply) => panic!(
                "{} -> {dst}: sent {} bytes, got a different line back ({} bytes)",
                self.pod.name,
                message.len(),
                reply.len()
            ),
            Err(err) => panic!("{err}"),
        }
    }

    /// Starts a long-lived `bash` client in the pod (see [`PodShell`]).
    pub fn shell(&self) -> PodShell {
        let mut cmd = self.command("bash");
        cmd.arg("-c").arg(SHELL);
        PodShell::spawn(cmd, &self.pod)
    }
}

/// The echo server process of a pod. Killed on drop.
pub struct PodEchoServer {
    addr: SocketAddr,
    proc: LoggedProc,
}

impl PodEchoServer {
    /// `podIP:port`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Number of lines logged so far (see [`PodEchoServer::peer_since`]).
    pub fn mark(&self) -> usize {
        self.proc.log_mark()
    }

    /// The peer address of the first connection accepted after `mark`, waiting up to
    /// [`PATIENCE`]; panics with the log if there is none.
    pub fn peer_since(&self, mark: usize) -> SocketAddr {
        let line = self.proc.wait_for_log_since(mark, "accepted ", PATIENCE);
        let text = line.rsplit("accepted ").next().unwrap_or_default().trim();
        text.parse()
            .or_panic(|| format!("echo server peer address in `{line}`"))
    }

    /// The process (its log and pid).
    pub fn proc(&self) -> &LoggedProc {
        &self.proc
    }
}

/// A long-lived `bash` process of a pod driven line by line over stdin/stdout: new
/// connections, and one connection kept open across enrollment changes and agent restarts.
/// Killed on drop.
pub struct PodShell {
    label: String,
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl PodShell {
    fn spawn(mut cmd: Command, pod: &Pod) -> PodShell {
        let label = format!("client shell in pod {}", pod.name);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().or_panic(|| format!("starting {label}"));
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            panic!("{label}: no stdin/stdout pipe");
        };
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let shell = PodShell {
            label,
            child,
            stdin,
            lines,
        };
        match shell.lines.recv_timeout(READY_TIMEOUT) {
            Ok(line) if line == "ready" => shell,
            other => panic!("{} did not start: {other:?}", shell.label),
        }
    }

    /// The process id: the same before and after an enrollment change shows the pod was
    /// not restarted.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn command(&mut self, line: &str, timeout: Duration) -> Result<String, String> {
        writeln!(self.stdin, "{line}").or_panic(|| format!("writing to {}", self.label));
        self.stdin
            .flush()
            .or_panic(|| format!("writing to {}", self.label));
        match self.lines.recv_timeout(timeout) {
            Ok(answer) => match answer.strip_prefix("ok ") {
                Some(rest) => Ok(rest.to_owned()),
                None => Err(format!("{}: `{line}` answered `{answer}`", self.label)),
            },
            Err(_) => Err(format!(
                "{}: no answer to `{line}` within {timeout:?}",
                self.label
            )),
        }
    }

    /// A fresh connection to `dst`: sends `message` (one line, no spaces needed), returns the
    /// echoed line.
    pub fn new_request(&mut self, dst: SocketAddr, message: &str) -> Result<String, String> {
        self.command(
            &format!("new {} {} {message}", dst.ip(), dst.port()),
            PATIENCE + PATIENCE,
        )
    }

    /// Opens the shell's kept-open connection to `dst`.
    pub fn open(&mut self, dst: SocketAddr) -> Result<(), String> {
        self.command(&format!("open {} {}", dst.ip(), dst.port()), PATIENCE)
            .map(drop)
    }

    /// Sends `message` (no spaces) over the kept-open connection; returns the echoed line.
    pub fn send(&mut self, message: &str) -> Result<String, String> {
        self.command(&format!("send {message}"), PATIENCE + PATIENCE)
    }

    /// Closes the kept-open connection.
    pub fn close(&mut self) {
        let _ = self.command("close", PATIENCE);
    }
}

impl Drop for PodShell {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
