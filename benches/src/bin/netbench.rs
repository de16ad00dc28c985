//! `netbench`: pod-to-pod throughput, latency, connection rate and proxy memory, over plain
//! TCP and through two `ztunnel` proxies, in one run on the e2e tests' topology (Linux, root).
//!
//! ```text
//!   node1: client (meshed, in-pod redirect + ztunnel)   ──HBONE──▶  node2: server (meshed)
//!          direct-client (no proxy, no redirect)        ──TCP────▶         direct-server
//! ```
//!
//! Both pairs cross the same veth/bridge/node-link path, so the ratio isolates the proxies.
//! Usage: see `USAGE` or `benches/README.md`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{Context, bail};
use mesh_benches::netbench::iperf::{self, IperfServer};
use mesh_benches::netbench::report::Report;
use mesh_benches::netbench::stats::LatencySummary;
use mesh_benches::netbench::traffic::{self, EchoServer, RateResult};
use mesh_benches::netbench::{
    chart, process_name, request_stop, rss_kib, rss_parts_kib, stop_requested,
};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use serde_json::json;
use ztunnel::test_helpers::netns::{
    LocalConfig, Pod, Protocol, Topology, ZtunnelProc, eventually, require_root,
};

const USAGE: &str = "\
usage: netbench <path to a release ztunnel binary> [options]   (Linux, as root)

options:
  --duration <secs>         iperf3 run length per measurement (default 5)
  --round-trips <n>         timed 1 KiB round trips per side (default 20000)
  --connections <n>         connections per connection-rate run (default 3000)
  --workers <n>             concurrent client threads in connection-rate runs (default 4)
  --idle-connections <n>    open idle connections for the loaded RSS figure (default 10000)
  --out <dir>               where netbench.json and netbench.png go (default target/bench)
  --no-chart                skip the PNG
  --only <list>             run only these parts, comma-separated: memory, throughput,
                            latency, rate (default: all; for quick A/B runs)";

const ECHO_PORT: u16 = 8080;
const IPERF_PORT: u16 = 5201;
const PAYLOAD: usize = 1024;
/// Untimed round trips / connections before each timed run.
const WARMUP_ROUND_TRIPS: usize = 1_000;
const WARMUP_CONNECTIONS: usize = 50;
/// Wait between the proxies releasing the closed connections' sockets and the
/// after-close RSS reading.
const AFTER_CLOSE_SETTLE: Duration = Duration::from_secs(1);
/// How long the proxies may take to release 10,000 closed connections.
const DRAIN_PATIENCE: Duration = Duration::from_secs(60);

struct Args {
    ztunnel: PathBuf,
    duration: Duration,
    round_trips: usize,
    connections: usize,
    workers: usize,
    idle_connections: usize,
    out: PathBuf,
    chart: bool,
    /// Parts to run (`None` = all).
    only: Option<Vec<String>>,
}

impl Args {
    /// Whether the part `name` (memory, throughput, latency, rate) runs.
    fn runs(&self, name: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|parts| parts.iter().any(|p| p == name))
    }
}

/// The parts `--only` accepts.
const PARTS: [&str; 4] = ["memory", "throughput", "latency", "rate"];

fn parse_args() -> anyhow::Result<Args> {
    let mut args = std::env::args().skip(1);
    let mut parsed = Args {
        ztunnel: PathBuf::new(),
        duration: Duration::from_secs(5),
        round_trips: 20_000,
        connections: 3_000,
        workers: 4,
        idle_connections: 10_000,
        out: PathBuf::from("target/bench"),
        chart: true,
        only: None,
    };
    let mut binary = None;
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .with_context(|| format!("{name} needs a value\n{USAGE}"))
        };
        let number = |name: &str, text: String| -> anyhow::Result<usize> {
            text.parse()
                .with_context(|| format!("{name}: {text:?} is not a number"))
        };
        match arg.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--duration" => {
                let secs = number(&arg, value(&arg)?)?;
                parsed.duration = Duration::from_secs(secs.max(1) as u64);
            }
            "--round-trips" => parsed.round_trips = number(&arg, value(&arg)?)?.max(1),
            "--connections" => parsed.connections = number(&arg, value(&arg)?)?.max(1),
            "--workers" => parsed.workers = number(&arg, value(&arg)?)?.max(1),
            "--idle-connections" => parsed.idle_connections = number(&arg, value(&arg)?)?,
            "--out" => parsed.out = PathBuf::from(value(&arg)?),
            "--no-chart" => parsed.chart = false,
            "--only" => {
                let parts: Vec<String> = value(&arg)?.split(',').map(str::to_owned).collect();
                if let Some(bad) = parts.iter().find(|p| !PARTS.contains(&p.as_str())) {
                    bail!("--only: unknown part {bad:?} (one of {PARTS:?})");
                }
                parsed.only = Some(parts);
            }
            flag if flag.starts_with('-') => bail!("unknown option {flag}\n{USAGE}"),
            path if binary.is_none() => binary = Some(PathBuf::from(path)),
            extra => bail!("unexpected argument {extra:?}\n{USAGE}"),
        }
    }
    parsed.ztunnel = binary.with_context(|| format!("missing the ztunnel binary\n{USAGE}"))?;
    Ok(parsed)
}

fn main() -> ExitCode {
    let mut argv = std::env::args().skip(1);
    let result = match (argv.next().as_deref(), argv.next()) {
        // Internal: the echo server the harness starts in the server pods.
        (Some(traffic::SERVE_ECHO), Some(port)) => port
            .parse()
            .context("serve-echo: bad port")
            .and_then(traffic::serve_echo),
        _ => run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("netbench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The two pod pairs, their servers and the proxies. Fields drop in order: processes and
/// servers first, the topology (namespaces, work directory) last.
struct Bed {
    client_proxy: Option<ZtunnelProc>,
    server_proxy: ZtunnelProc,
    _iperf: [IperfServer; 2],
    direct_echo: EchoServer,
    mesh_echo: EchoServer,
    client: Pod,
    server: Pod,
    direct_client: Pod,
    direct_server: Pod,
    ztunnel: PathBuf,
    topo: Topology,
}

impl Bed {
    fn new(ztunnel: &Path) -> anyhow::Result<Bed> {
        let mut topo = Topology::new("netbench").with_ztunnel_bin(ztunnel);
        let node1 = topo.add_node("node1");
        let node2 = topo.add_node("node2");
        let client = topo.add_pod_as(&node1, "client", "frontend", "client");
        let direct_client = topo.add_pod_as(&node1, "direct-client", "plain", "direct-client");
        let server = topo.add_pod_as(&node2, "server", "backend", "server");
        let direct_server = topo.add_pod_as(&node2, "direct-server", "plain", "direct-server");
        let direct_echo = EchoServer::start(&direct_server, ECHO_PORT)?;
        let mesh_echo = EchoServer::start(&server, ECHO_PORT)?;
        let iperf_servers = [
            IperfServer::start(&direct_server, IPERF_PORT)?,
            IperfServer::start(&server, IPERF_PORT)?,
        ];
        topo.apply_inpod_redirect(&client);
        topo.apply_inpod_redirect(&server);
        topo.write_local_config(
            &LocalConfig::new()
                .workload(&client, Protocol::Hbone)
                .workload(&server, Protocol::Hbone)
                .workload(&direct_client, Protocol::Tcp)
                .workload(&direct_server, Protocol::Tcp),
        );
        let server_proxy = topo.start_ztunnel(&server, &[]);
        let client_proxy = topo.start_ztunnel(&client, &[]);
        Ok(Bed {
            client_proxy: Some(client_proxy),
            server_proxy,
            _iperf: iperf_servers,
            direct_echo,
            mesh_echo,
            client,
            server,
            direct_client,
            direct_server,
            ztunnel: ztunnel.to_owned(),
            topo,
        })
    }

    fn client_proxy(&self) -> anyhow::Result<&ZtunnelProc> {
        self.client_proxy
            .as_ref()
            .context("the client proxy is not running")
    }

    /// Replaces the client proxy with one started with `env` (e.g. a pool setting).
    fn restart_client_proxy(&mut self, env: &[(&str, &str)]) {
        drop(self.client_proxy.take());
        self.client_proxy = Some(self.topo.start_ztunnel(&self.client, env));
    }
}

/// The process id of the proxy itself: `nsenter` execs it, so the child's pid, checked
/// through `/proc/<pid>/exe` so that memory figures never describe `nsenter`.
fn proxy_pid(proc: &ZtunnelProc, ztunnel: &Path) -> anyhow::Result<u32> {
    let pid = proc.pid();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .with_context(|| format!("reading /proc/{pid}/exe"))?;
    if exe != ztunnel {
        let name = process_name(pid).unwrap_or_default();
        bail!(
            "process {pid} runs {} ({name}), not {}: cannot read the proxy's memory",
            exe.display(),
            ztunnel.display()
        );
    }
    Ok(pid)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// `Tcp: ActiveOpens` of `pod`'s netns (`/proc/net/snmp` read from inside it): every
/// `connect()` made there, by the app or by its proxy.
fn active_opens(pod: &Pod) -> anyhow::Result<u64> {
    let out = pod.exec(&["cat", "/proc/net/snmp"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else {
        bail!("no Tcp lines in /proc/net/snmp of pod {}", pod.name);
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "ActiveOpens")
        .and_then(|(_, value)| value.parse().ok())
        .with_context(|| format!("no Tcp ActiveOpens in /proc/net/snmp of pod {}", pod.name))
}

/// Raises RLIMIT_NOFILE to `needed` (soft and, if allowed, hard; without CAP_SYS_RESOURCE
/// only up to the hard limit). Children (the proxies, the servers) inherit it. Returns the
/// soft limit in force.
fn raise_nofile(needed: u64) -> u64 {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft >= needed {
        return soft;
    }
    if setrlimit(Resource::RLIMIT_NOFILE, needed, hard.max(needed)).is_ok() {
        return needed;
    }
    let capped = needed.min(hard);
    match setrlimit(Resource::RLIMIT_NOFILE, capped, hard) {
        Ok(()) => {
            eprintln!("warning: RLIMIT_NOFILE capped at the hard limit {hard} (wanted {needed})");
            capped
        }
        Err(err) => {
            eprintln!("warning: cannot raise RLIMIT_NOFILE above {soft}: {err}");
            soft
        }
    }
}

/// User + system CPU time of process `pid` (all threads) in clock ticks, from
/// `/proc/<pid>/stat` (fields 14 and 15).
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("no ')' in /proc/<pid>/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    let field = |n: usize| -> anyhow::Result<u64> {
        fields
            .get(n - 3)
            .context("short /proc/<pid>/stat")?
            .parse()
            .with_context(|| format!("field {n} of /proc/{pid}/stat"))
    };
    Ok(field(14)? + field(15)?)
}

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn check_stop() -> anyhow::Result<()> {
    if stop_requested() {
        bail!("stopped by a signal");
    }
    Ok(())
}

fn run() -> anyhow::Result<()> {
    let args = parse_args()?;
    require_root();
    if !args.ztunnel.is_file() {
        bail!(
            "{} is not a file (build it: cargo build --release -p ztunnel)",
            args.ztunnel.display()
        );
    }
    let iperf_version = command_output("iperf3", &["--version"]);
    if iperf_version.is_empty() {
        bail!("iperf3 not found (apt-get install iperf3)");
    }
    // One socket per idle connection in the harness (clients), in the echo server and in
    // each proxy, plus HBONE connections and slack. Everything inherits this limit.
    let nofile = raise_nofile(args.idle_connections as u64 + 4_096);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("netbench-server")
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    rt.spawn(async {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        eprintln!("netbench: stopping after the current step; cleaning up");
        request_stop();
    });

    let mut report = Report::default();
    let ztunnel = std::fs::canonicalize(&args.ztunnel)
        .with_context(|| format!("resolving {}", args.ztunnel.display()))?;
    report.settings = json!({
        "ztunnel": ztunnel.display().to_string(),
        "iperf3": iperf_version.lines().next().unwrap_or_default(),
        "kernel": command_output("uname", &["-r"]),
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "unix_time": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        "iperf_seconds": args.duration.as_secs(),
        "round_trips": args.round_trips,
        "payload_bytes": PAYLOAD,
        "connections_per_rate_run": args.connections,
        "rate_workers": args.workers,
        "idle_connections_requested": args.idle_connections,
        "only": args.only,
        "rlimit_nofile": nofile,
        "pool_defeated_by": "POOL_MAX_STREAMS_PER_CONNECTION=1 on the client proxy",
    })
    .as_object()
    .cloned()
    .unwrap_or_default();

    println!("netbench: building the topology (2 nodes, 4 pods, 2 proxies)");
    let mut bed = Bed::new(&ztunnel)?;
    let result = measure(&mut bed, &args, &mut report);
    drop(bed);
    drop(rt);
    result?;

    let json_path = args.out.join("netbench.json");
    report.write_json(&json_path)?;
    println!("\nwrote {}", json_path.display());
    if args.chart {
        let png = args.out.join("netbench.png");
        let idle = report
            .details
            .get("idle_connections")
            .and_then(|v| v.get("opened"))
            .map_or_else(|| "0".to_owned(), ToString::to_string);
        match chart::draw(&report, &png, &idle) {
            Ok(()) => println!("wrote {}", png.display()),
            Err(err) => eprintln!("netbench: no chart: {err:#}"),
        }
    }
    Ok(())
}

fn measure(bed: &mut Bed, args: &Args, report: &mut Report) -> anyhow::Result<()> {
    let client_pid = proxy_pid(bed.client_proxy()?, &bed.ztunnel)?;
    let server_pid = proxy_pid(&bed.server_proxy, &bed.ztunnel)?;

    if args.runs("memory") {
        measure_memory(bed, args, report, client_pid, server_pid)?;
    }
    if args.runs("throughput") {
        measure_throughput(bed, args, report)?;
    }
    if args.runs("latency") {
        measure_latency(bed, args, report)?;
    }
    if args.runs("rate") {
        measure_rate(bed, args, report)?;
    }
    Ok(())
}

fn measure_rate(bed: &mut Bed, args: &Args, report: &mut Report) -> anyhow::Result<()> {
    println!(
        "\n== new connections (connect, 1-byte echo, close; {} per run, {} client threads)",
        args.connections, args.workers
    );
    let rate_run = |bed: &Bed, name: &str| -> anyhow::Result<(RateResult, RateResult, u64)> {
        check_stop()?;
        traffic::connection_rate(
            &bed.direct_client,
            bed.direct_echo.addr(),
            WARMUP_CONNECTIONS,
            1,
        );
        traffic::connection_rate(&bed.client, bed.mesh_echo.addr(), WARMUP_CONNECTIONS, 1);
        let direct = traffic::connection_rate(
            &bed.direct_client,
            bed.direct_echo.addr(),
            args.connections,
            args.workers,
        );
        check_stop()?;
        // Connects in the client pod = the app's connections + the proxy's HBONE dials.
        let opens_before = active_opens(&bed.client)?;
        let mesh = traffic::connection_rate(
            &bed.client,
            bed.mesh_echo.addr(),
            args.connections,
            args.workers,
        );
        let opens = active_opens(&bed.client)?.saturating_sub(opens_before);
        let dialed = opens.saturating_sub((mesh.completed + mesh.failed) as u64);
        for (side, run) in [("direct", &direct), (name, &mesh)] {
            if run.failed > 0 {
                println!(
                    "  warning: {side}: {} of {} connections failed (first: {})",
                    run.failed,
                    run.failed + run.completed,
                    run.first_error.as_deref().unwrap_or("?")
                );
            }
        }
        Ok((direct, mesh, dialed))
    };
    let (direct, pooled, pooled_dials) = rate_run(bed, "mesh pooled")?;
    report.compare(
        "conn_rate_pooled",
        "new connections/s, pool reused",
        "conn/s",
        direct.per_second,
        pooled.per_second,
    );
    println!("  HBONE connections dialed by the client proxy during the run: {pooled_dials}");
    println!(
        "  restarting the client proxy with POOL_MAX_STREAMS_PER_CONNECTION=1 (pool defeated)"
    );
    bed.restart_client_proxy(&[("POOL_MAX_STREAMS_PER_CONNECTION", "1")]);
    let (direct_again, unpooled, unpooled_dials) = rate_run(bed, "mesh unpooled")?;
    report.compare(
        "conn_rate_unpooled",
        "new connections/s, pool defeated",
        "conn/s",
        direct_again.per_second,
        unpooled.per_second,
    );
    println!("  HBONE connections dialed by the client proxy during the run: {unpooled_dials}");
    report.detail(
        "connection_rate",
        json!({
            "pooled": { "direct": direct, "mesh": pooled, "hbone_connections_dialed": pooled_dials },
            "unpooled": { "direct": direct_again, "mesh": unpooled, "hbone_connections_dialed": unpooled_dials,
                          "how": "client proxy restarted with POOL_MAX_STREAMS_PER_CONNECTION=1: every stream fills its connection, which leaves the pool and closes when the stream ends" },
        }),
    );
    Ok(())
}

fn measure_memory(
    bed: &Bed,
    args: &Args,
    report: &mut Report,
    client_pid: u32,
    server_pid: u32,
) -> anyhow::Result<()> {
    println!("\n== proxy memory (RSS), idle and with open idle connections");
    let rss = |pid| rss_kib(pid).with_context(|| format!("reading VmRSS of {pid}"));
    let idle = (rss(client_pid)?, rss(server_pid)?);
    let parts = |pid| rss_parts_kib(pid).with_context(|| format!("reading the RSS of {pid}"));
    let idle_parts = (parts(client_pid)?, parts(server_pid)?);
    println!(
        "  idle RSS parts (anon/file/shmem KiB): client {:?}, server {:?}",
        idle_parts.0, idle_parts.1
    );
    report.absolute(
        "rss_client_idle",
        "client proxy RSS, idle (after start)",
        "MiB",
        mib(idle.0),
    );
    report.absolute(
        "rss_server_idle",
        "server proxy RSS, idle (after start)",
        "MiB",
        mib(idle.1),
    );
    let fds_before = (open_fds(client_pid), open_fds(server_pid));
    let (open, error) =
        traffic::open_idle(&bed.client, bed.mesh_echo.addr(), args.idle_connections);
    let opened = open.len();
    if let Some(err) = &error {
        println!(
            "  opened {opened} of {} idle connections; stopped at: {err}",
            args.idle_connections
        );
    }
    let loaded = (rss(client_pid)?, rss(server_pid)?);
    let fds_loaded = (open_fds(client_pid), open_fds(server_pid));
    let label = |side| format!("{side} proxy RSS, {opened} open connections");
    report.absolute("rss_client_loaded", &label("client"), "MiB", mib(loaded.0));
    report.absolute("rss_server_loaded", &label("server"), "MiB", mib(loaded.1));
    if opened > 0 {
        let per_conn = |a: u64, b: u64| (a.saturating_sub(b) as f64 * 1024.0) / opened as f64;
        println!(
            "  per open connection: client proxy {:.1} KiB, server proxy {:.1} KiB",
            per_conn(loaded.0, idle.0) / 1024.0,
            per_conn(loaded.1, idle.1) / 1024.0
        );
    }
    drop(open);
    check_stop()?;
    // Wait (bounded) until both proxies closed their side of every connection.
    let drained = eventually(DRAIN_PATIENCE, || {
        open_fds(client_pid) <= fds_before.0 + 16 && open_fds(server_pid) <= fds_before.1 + 16
    });
    // Freed memory goes back to the OS a moment after the sockets close (allocator trims
    // run shortly after a wave of closes): measure once that moment passed.
    std::thread::sleep(AFTER_CLOSE_SETTLE);
    let after = (rss(client_pid)?, rss(server_pid)?);
    report.absolute(
        "rss_client_after_close",
        "client proxy RSS, after closing them",
        "MiB",
        mib(after.0),
    );
    report.absolute(
        "rss_server_after_close",
        "server proxy RSS, after closing them",
        "MiB",
        mib(after.1),
    );
    report.detail(
        "idle_connections",
        json!({
            "requested": args.idle_connections,
            "opened": opened,
            "stopped_by": error.map(|e| e.to_string()),
            "rss_idle_parts_kib": { "fields": ["RssAnon", "RssFile", "RssShmem"], "client": idle_parts.0, "server": idle_parts.1 },
            "rss_kib": { "idle": [idle.0, idle.1], "loaded": [loaded.0, loaded.1], "after_close": [after.0, after.1] },
            "open_fds": { "before": [fds_before.0, fds_before.1], "loaded": [fds_loaded.0, fds_loaded.1] },
            "released_within_patience": drained,
            "order": ["client proxy", "server proxy"],
        }),
    );

    Ok(())
}

fn measure_throughput(bed: &Bed, args: &Args, report: &mut Report) -> anyhow::Result<()> {
    println!(
        "\n== bulk throughput (iperf3, {} s per run, first second omitted)",
        args.duration.as_secs()
    );
    let pids = [
        proxy_pid(bed.client_proxy()?, &bed.ztunnel)?,
        proxy_pid(&bed.server_proxy, &bed.ztunnel)?,
    ];
    let ticks_per_second: f64 = command_output("getconf", &["CLK_TCK"])
        .parse()
        .unwrap_or(100.0);
    let proxy_cpu_seconds = || -> anyhow::Result<f64> {
        let mut ticks = 0;
        for pid in pids {
            ticks += cpu_ticks(pid).with_context(|| format!("reading the CPU time of {pid}"))?;
        }
        Ok(ticks as f64 / ticks_per_second)
    };
    let mut runs = Vec::new();
    for streams in [1u32, 8] {
        check_stop()?;
        let direct = iperf::run_client(
            &bed.direct_client,
            bed.direct_server.addr(IPERF_PORT),
            streams,
            args.duration,
        )?;
        check_stop()?;
        let cpu_before = proxy_cpu_seconds()?;
        let mesh = iperf::run_client(
            &bed.client,
            bed.server.addr(IPERF_PORT),
            streams,
            args.duration,
        )?;
        let cpu = proxy_cpu_seconds()? - cpu_before;
        let plural = if streams == 1 { "" } else { "s" };
        report.compare(
            &format!("throughput_{streams}conn"),
            &format!("bulk throughput, {streams} connection{plural}"),
            "Gbit/s",
            direct.gbps(),
            mesh.gbps(),
        );
        // CPU both proxies spent on the whole mesh run (the omitted first second too) per
        // GB counted by iperf3: a cost per byte that the machine's other load barely moves.
        let gigabytes = mesh.received_bps * mesh.seconds / 8e9;
        if gigabytes > 0.0 {
            report.absolute(
                &format!("proxy_cpu_{streams}conn"),
                &format!("proxies' CPU per GB, {streams} connection{plural}"),
                "CPU-s/GB",
                cpu / gigabytes,
            );
        }
        runs.push(json!({ "streams": streams, "direct": direct, "mesh": mesh }));
    }
    report.detail("throughput", runs);

    Ok(())
}

fn measure_latency(bed: &Bed, args: &Args, report: &mut Report) -> anyhow::Result<()> {
    println!(
        "\n== 1 KiB request/response on one open connection ({} round trips)",
        args.round_trips
    );
    check_stop()?;
    let mut direct = traffic::round_trips(
        &bed.direct_client,
        bed.direct_echo.addr(),
        PAYLOAD,
        WARMUP_ROUND_TRIPS,
        args.round_trips,
    )
    .context("direct round trips")?;
    check_stop()?;
    let mut mesh = traffic::round_trips(
        &bed.client,
        bed.mesh_echo.addr(),
        PAYLOAD,
        WARMUP_ROUND_TRIPS,
        args.round_trips,
    )
    .context("round trips through the proxies")?;
    let (Some(direct), Some(mesh)) = (
        LatencySummary::of(&mut direct),
        LatencySummary::of(&mut mesh),
    ) else {
        bail!("no latency samples");
    };
    report.compare(
        "latency_p50",
        "1 KiB round trip, p50",
        "µs",
        direct.p50_us,
        mesh.p50_us,
    );
    report.compare(
        "latency_p99",
        "1 KiB round trip, p99",
        "µs",
        direct.p99_us,
        mesh.p99_us,
    );
    report.detail("latency", json!({ "direct": direct, "mesh": mesh }));

    Ok(())
}
