#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use veilnet_cell::TargetAddr;
use veilnet_config::Config;
use veilnet_control::{get_json, CircuitView, NodeView};
use veilnet_testnet::socks5::{self, Credentials};
use veilnet_testnet::{http, LocalNetwork, LocalRole};

/// What to measure (also the `veilnet bench` command line).
#[derive(Debug, Clone, Serialize, clap::Args)]
pub struct BenchOptions {
    /// Relay processes.
    #[arg(long, default_value_t = 10)]
    pub nodes: usize,
    /// Hops per circuit.
    #[arg(long, default_value_t = 3)]
    pub hops: u8,
    /// MiB downloaded by the single-stream test (and in total by the aggregate test).
    #[arg(long, default_value_t = 256)]
    pub bulk_mib: usize,
    /// Parallel streams, each on its own circuit.
    #[arg(long, default_value_t = 8)]
    pub streams: usize,
    /// Sequential small requests for time to first byte.
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
    /// Fresh circuits built for the build-time figure.
    #[arg(long, default_value_t = 100)]
    pub circuits: usize,
    /// Idle circuits held for the memory figure.
    #[arg(long, default_value_t = 1000)]
    pub idle_circuits: usize,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    #[serde(skip)]
    pub json: Option<PathBuf>,
    /// The `veilnet` binary to start (normally this one).
    #[arg(skip)]
    #[serde(skip)]
    pub exe: PathBuf,
}

/// p50 and p99 of a sample, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// Figures measured through veilnet.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct VeilnetFigures {
    /// One stream, MB/s (10^6 bytes).
    pub bulk_mbps: f64,
    /// All parallel streams together, MB/s.
    pub aggregate_mbps: f64,
    /// Time to first byte of a small request on a new stream over a built circuit.
    pub ttfb_ms: Percentiles,
    /// Circuit build time.
    pub build_ms: Percentiles,
    /// From starting the node processes to the first carried stream.
    pub bootstrap_s: f64,
    /// CPU seconds of all veilnet processes per GB carried.
    pub cpu_s_per_gb: f64,
    /// Relay memory per idle circuit hop (RSS growth / circuit hops held).
    pub bytes_per_idle_circuit: f64,
    /// Relay RSS at rest, bytes (mean over relays).
    pub relay_rss_at_rest: f64,
}

/// The same measurements made directly against the target.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct DirectFigures {
    /// One connection, MB/s.
    pub bulk_mbps: f64,
    /// Parallel connections together, MB/s.
    pub aggregate_mbps: f64,
    /// Time to first byte of a small request on a new connection.
    pub ttfb_ms: Percentiles,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Through veilnet.
    pub veilnet: VeilnetFigures,
    /// Direct.
    pub direct: DirectFigures,
    /// veilnet / direct.
    pub ratios: serde_json::Value,
    /// The parameters.
    pub params: BenchOptions,
    /// Every downloaded body matched its SHA-256.
    pub payload_verified: bool,
}

// ---------------------------------------------------------------- clients

/// A stream to `target` through the SOCKS5 proxy; streams with another
/// `user` get another circuit.
async fn socks(
    proxy: SocketAddr,
    target: SocketAddr,
    user: Option<&str>,
) -> Result<TcpStream, String> {
    let credentials = user.map(|user| Credentials { user, pass: "x" });
    socks5::open(proxy, &TargetAddr::Ip(target), credentials)
        .await
        .map_err(|e| format!("socks: {e}"))
}

struct Fetched {
    bytes: usize,
    sha: [u8; 32],
    ttfb: Duration,
}

/// A connection that notes when its first byte arrived: the time to first
/// byte is taken at the socket, as a hand-written client would see it, not
/// when hyper has parsed the whole response head and its connection task
/// has handed it over.
struct FirstByte<S> {
    inner: S,
    at: Arc<OnceLock<Instant>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for FirstByte<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let _ = self.at.get_or_init(Instant::now);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FirstByte<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// GETs n pattern bytes over an open connection; `start` is when the
/// request began (the time to first byte counts from it to the first
/// response byte read from the socket).
async fn fetch(s: TcpStream, n: usize, start: Instant) -> Result<Fetched, String> {
    let at = Arc::new(OnceLock::new());
    let io = FirstByte {
        inner: s,
        at: at.clone(),
    };
    let f = http::get(io, &http::bytes_path(n as u64))
        .await
        .map_err(|e| e.to_string())?;
    if f.status != 200 {
        return Err(format!("HTTP status {}", f.status));
    }
    let first = at.get().copied().unwrap_or(f.head_at);
    Ok(Fetched {
        bytes: f.len as usize,
        sha: f.sha256,
        ttfb: first.saturating_duration_since(start),
    })
}

// ---------------------------------------------------------------- processes

struct Procs {
    children: Vec<(u32, Child)>,
    dir: PathBuf,
    /// Set when the run failed: the logs stay for the reader.
    keep: bool,
}

impl Procs {
    /// A failure message that keeps the logs and quotes the end of each.
    fn failed(&mut self, what: &str) -> String {
        self.keep = true;
        let mut msg = format!("{what}; logs in {}", self.dir.display());
        let mut logs: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("node.log"))
            .filter(|p| p.exists())
            .collect();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(5)..];
            msg.push_str(&format!("\n--- {}\n{}", log.display(), tail.join("\n")));
        }
        msg
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn free_port() -> Result<u16, String> {
    veilnet_testnet::ports::pick_port().map_err(|e| format!("no free port: {e}"))
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU seconds (user + system) of a process.
fn cpu_secs(pid: u32, tck: f64) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces) start after ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ut: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let st: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (ut + st) / tck
}

/// Resident set size of a process, bytes.
fn rss_bytes(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kb| kb * 1024.0)
        .unwrap_or(0.0)
}

fn write_config(dir: &Path, cfg: &Config) -> Result<PathBuf, String> {
    let text = toml::to_string(cfg).map_err(|e| format!("config: {e}"))?;
    let path = dir.join("bench.toml");
    std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(path)
}

fn spawn_node(exe: &Path, dir: &Path, config: &Path) -> Result<Child, String> {
    let log = std::fs::File::create(dir.join("node.log")).map_err(|e| format!("log: {e}"))?;
    let mut cmd = Command::new(exe);
    if let Ok(n) = std::env::var("VEILNET_BENCH_NODE_THREADS") {
        cmd.env("TOKIO_WORKER_THREADS", n);
    }
    cmd.arg("node")
        .arg("--config")
        .arg(config)
        .env(
            "RUST_LOG",
            std::env::var("VEILNET_BENCH_NODE_LOG").unwrap_or_else(|_| "warn".to_string()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", exe.display()))
}

fn percentiles(mut v: Vec<f64>) -> Percentiles {
    if v.is_empty() {
        return Percentiles {
            p50: f64::NAN,
            p99: f64::NAN,
        };
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[(((v.len() as f64) * q).ceil() as usize).clamp(1, v.len()) - 1];
    Percentiles {
        p50: at(0.50),
        p99: at(0.99),
    }
}

/// Waits for parallel downloads: total bytes, and whether every body matched `sha`.
async fn join_downloads(
    mut set: tokio::task::JoinSet<Result<Fetched, String>>,
    sha: [u8; 32],
) -> Result<(usize, bool), String> {
    let (mut total, mut ok) = (0, true);
    while let Some(r) = set.join_next().await {
        let f = r.map_err(|e| e.to_string())??;
        ok &= f.sha == sha;
        total += f.bytes;
    }
    Ok((total, ok))
}

fn mbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

fn progress(msg: &str) {
    eprint!("\r\x1b[2K[bench] {msg}");
}

// ---------------------------------------------------------------- run

/// Runs the benchmark and returns the report (also printed and, with
/// `json`, written to a file).
pub async fn run(opts: BenchOptions) -> Result<BenchReport, String> {
    if opts.nodes < usize::from(opts.hops) || opts.hops == 0 || opts.streams == 0 {
        return Err("need --nodes >= --hops >= 1 and --streams >= 1".to_string());
    }
    let target = http::target().await.map_err(|e| format!("target: {e}"))?;
    let bulk = opts.bulk_mib << 20;
    let per_stream = bulk / opts.streams;
    let bulk_sha = http::body_sha256(bulk as u64);
    let per_sha = http::body_sha256(per_stream as u64);
    let small_sha = http::body_sha256(1024);
    let mut verified = true;

    // Direct baseline.
    progress("direct: bulk");
    let t = Instant::now();
    let s = TcpStream::connect(target)
        .await
        .map_err(|e| e.to_string())?;
    let f = fetch(s, bulk, t).await?;
    verified &= f.sha == bulk_sha && f.bytes == bulk;
    let direct_bulk = mbps(f.bytes, t.elapsed());
    progress("direct: aggregate");
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..opts.streams {
        set.spawn(async move {
            let s = TcpStream::connect(target)
                .await
                .map_err(|e| e.to_string())?;
            fetch(s, per_stream, Instant::now()).await
        });
    }
    let (total, ok) = join_downloads(set, per_sha).await?;
    verified &= ok;
    let direct_agg = mbps(total, t.elapsed());
    progress("direct: time to first byte");
    let mut direct_ttfb = Vec::new();
    for _ in 0..opts.requests {
        let t = Instant::now();
        let s = TcpStream::connect(target)
            .await
            .map_err(|e| e.to_string())?;
        let f = fetch(s, 1024, t).await?;
        verified &= f.sha == small_sha;
        direct_ttfb.push(f.ttfb.as_secs_f64() * 1000.0);
    }

    // The network: separate processes of this binary.
    progress("starting nodes");
    let base = std::env::temp_dir().join(format!(
        "veilnet-bench-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let mut procs = Procs {
        children: Vec::new(),
        dir: base.clone(),
        keep: false,
    };
    let exits = (opts.nodes / 3).max(1);
    let local = LocalNetwork {
        hops: opts.hops,
        allow_private_targets: true,
        ..LocalNetwork::default()
    };
    let mut prepared = Vec::new();
    let mut bootstrap = Vec::new();
    for i in 0..=opts.nodes {
        let role = LocalRole::of(i, opts.nodes, exits);
        let dir = LocalNetwork::data_dir(&base, i, role);
        let report = veilnet_config::init_data_dir(&dir).map_err(|e| e.to_string())?;
        // Separate processes: every port is chosen here, before they start.
        let p2p_port = free_port()?;
        let mut c = local.config(role, dir.clone(), p2p_port, free_port()?, bootstrap.clone());
        // Every node answers the control API, so the bench can see when
        // gossip has finished everywhere.
        c.control.listen = Some(SocketAddr::from(([127, 0, 0, 1], free_port()?)));
        if role == LocalRole::Client {
            c.client.socks = Some(SocketAddr::from(([127, 0, 0, 1], free_port()?)));
        }
        if i == 0 {
            bootstrap = vec![LocalNetwork::bootstrap_addr(
                &c.node.p2p_listen[0],
                report.peer_id,
            )];
        }
        let path = write_config(&dir, &c)?;
        prepared.push((dir, path, c));
    }
    let started = Instant::now();
    for (dir, path, _) in &prepared {
        let child = spawn_node(&opts.exe, dir, path)?;
        procs.children.push((child.id(), child));
    }
    let client_cfg = &prepared[opts.nodes].2;
    let socks_addr = client_cfg.client.socks.ok_or("no socks")?;
    let control = client_cfg.control.listen.ok_or("no control")?;

    progress("bootstrapping");
    let bootstrap_s = loop {
        let attempt = async {
            let s = socks(socks_addr, target, None).await?;
            fetch(s, 1024, Instant::now()).await
        };
        if let Ok(Ok(f)) = tokio::time::timeout(Duration::from_secs(5), attempt).await {
            if f.sha == small_sha {
                break started.elapsed().as_secs_f64();
            }
        }
        if started.elapsed() > Duration::from_secs(90) {
            return Err(procs.failed("the network did not carry a stream within 90 s"));
        }
        let exited = procs
            .children
            .iter_mut()
            .find_map(|(_, c)| c.try_wait().ok().flatten());
        if let Some(st) = exited {
            return Err(procs.failed(&format!("a node exited early ({st})")));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Let gossip finish so every node knows every relay before measuring:
    // an exit serves streams only on circuits whose previous hop is a relay
    // it knows.
    let controls: Vec<SocketAddr> = prepared
        .iter()
        .filter_map(|(_, _, c)| c.control.listen)
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    'gossip: while Instant::now() < deadline {
        for addr in &controls {
            let nodes: Vec<NodeView> = get_json(*addr, "/v1/nodes")
                .await
                .map_err(|e| e.to_string())?;
            if nodes.len() < opts.nodes {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue 'gossip;
            }
        }
        break;
    }
    let relay_pids: Vec<u32> = procs.children[..opts.nodes]
        .iter()
        .map(|(p, _)| *p)
        .collect();
    let all_pids: Vec<u32> = procs.children.iter().map(|(p, _)| *p).collect();

    // Memory: relays at rest, then holding idle circuits.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_rest: f64 = relay_pids.iter().map(|p| rss_bytes(*p)).sum();
    for i in 0..opts.idle_circuits {
        if i % 50 == 0 {
            progress(&format!(
                "building idle circuits {i}/{}",
                opts.idle_circuits
            ));
        }
        let s = socks(socks_addr, target, Some(&format!("idle-{i}"))).await?;
        drop(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle: f64 = relay_pids.iter().map(|p| rss_bytes(*p)).sum();
    let hop_states = (opts.idle_circuits * usize::from(opts.hops)).max(1) as f64;
    let bytes_per_idle_circuit = ((rss_idle - rss_rest) / hop_states).max(0.0);

    // Circuit build times, from the client's control API.
    let before: Vec<CircuitView> = get_json(control, "/v1/circuits")
        .await
        .map_err(|e| e.to_string())?;
    let max_id = before.iter().map(|c| c.id).max().unwrap_or(0);
    for i in 0..opts.circuits {
        if i % 10 == 0 {
            progress(&format!("building circuits {i}/{}", opts.circuits));
        }
        drop(socks(socks_addr, target, Some(&format!("build-{i}"))).await?);
    }
    let after: Vec<CircuitView> = get_json(control, "/v1/circuits")
        .await
        .map_err(|e| e.to_string())?;
    let builds: Vec<f64> = after
        .iter()
        .filter(|c| c.id > max_id)
        .map(|c| c.build_ms)
        .collect();

    // Time to first byte over the already built default circuit.
    progress("time to first byte");
    let mut ttfb = Vec::new();
    for _ in 0..opts.requests {
        let t = Instant::now();
        let s = socks(socks_addr, target, None).await?;
        let f = fetch(s, 1024, t).await?;
        verified &= f.sha == small_sha;
        ttfb.push(f.ttfb.as_secs_f64() * 1000.0);
    }

    // Throughput and CPU.
    let tck = clk_tck();
    let cpu0: f64 = all_pids.iter().map(|p| cpu_secs(*p, tck)).sum();
    progress("bulk: one stream");
    drop(socks(socks_addr, target, Some("bulk")).await?);
    let t = Instant::now();
    let f = fetch(socks(socks_addr, target, Some("bulk")).await?, bulk, t).await?;
    verified &= f.sha == bulk_sha && f.bytes == bulk;
    let bulk_mbps = mbps(f.bytes, t.elapsed());
    let mut carried = f.bytes;
    progress("aggregate: parallel streams on separate circuits");
    for i in 0..opts.streams {
        drop(socks(socks_addr, target, Some(&format!("agg-{i}"))).await?);
    }
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..opts.streams {
        set.spawn(async move {
            let s = socks(socks_addr, target, Some(&format!("agg-{i}"))).await?;
            fetch(s, per_stream, Instant::now()).await
        });
    }
    let (total, ok) = join_downloads(set, per_sha).await?;
    verified &= ok;
    let aggregate_mbps = mbps(total, t.elapsed());
    carried += total;
    let cpu1: f64 = all_pids.iter().map(|p| cpu_secs(*p, tck)).sum();
    let cpu_s_per_gb = (cpu1 - cpu0) / (carried as f64 / 1e9);
    eprint!("\r\x1b[2K");

    let veilnet = VeilnetFigures {
        bulk_mbps,
        aggregate_mbps,
        ttfb_ms: percentiles(ttfb),
        build_ms: percentiles(builds),
        bootstrap_s,
        cpu_s_per_gb,
        bytes_per_idle_circuit,
        relay_rss_at_rest: rss_rest / opts.nodes as f64,
    };
    let direct = DirectFigures {
        bulk_mbps: direct_bulk,
        aggregate_mbps: direct_agg,
        ttfb_ms: percentiles(direct_ttfb),
    };
    let ratios = serde_json::json!({
        "bulk": veilnet.bulk_mbps / direct.bulk_mbps,
        "aggregate": veilnet.aggregate_mbps / direct.aggregate_mbps,
        "ttfb_p50": veilnet.ttfb_ms.p50 / direct.ttfb_ms.p50,
        "ttfb_p99": veilnet.ttfb_ms.p99 / direct.ttfb_ms.p99,
    });
    let report = BenchReport {
        veilnet,
        direct,
        ratios,
        params: opts.clone(),
        payload_verified: verified,
    };
    drop(procs);
    if let Some(path) = &opts.json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(report)
}

/// The report as a table for people.
pub fn render(r: &BenchReport) -> String {
    let v = &r.veilnet;
    let d = &r.direct;
    let mut s = String::new();
    let p = &r.params;
    s.push_str(&format!(
        "veilnet bench: {} relays, {} hops, bulk {} MiB, {} streams, {} requests, {} builds, {} idle circuits\n\n",
        p.nodes, p.hops, p.bulk_mib, p.streams, p.requests, p.circuits, p.idle_circuits
    ));
    s.push_str(&format!(
        "{:<34} {:>12} {:>12} {:>8}\n",
        "figure", "veilnet", "direct", "ratio"
    ));
    let row = |s: &mut String, name: &str, a: f64, b: Option<f64>, unit: &str| {
        let bs = b.map(|b| format!("{b:.2}")).unwrap_or_else(|| "-".into());
        let ratio = b
            .map(|b| format!("{:.2}", a / b))
            .unwrap_or_else(|| "-".into());
        s.push_str(&format!(
            "{:<34} {:>12} {:>12} {:>8}\n",
            format!("{name} ({unit})"),
            format!("{a:.2}"),
            bs,
            ratio
        ));
    };
    row(
        &mut s,
        "bulk throughput, one stream",
        v.bulk_mbps,
        Some(d.bulk_mbps),
        "MB/s",
    );
    row(
        &mut s,
        "aggregate throughput",
        v.aggregate_mbps,
        Some(d.aggregate_mbps),
        "MB/s",
    );
    row(
        &mut s,
        "time to first byte p50",
        v.ttfb_ms.p50,
        Some(d.ttfb_ms.p50),
        "ms",
    );
    row(
        &mut s,
        "time to first byte p99",
        v.ttfb_ms.p99,
        Some(d.ttfb_ms.p99),
        "ms",
    );
    row(&mut s, "circuit build p50", v.build_ms.p50, None, "ms");
    row(&mut s, "circuit build p99", v.build_ms.p99, None, "ms");
    row(&mut s, "bootstrap", v.bootstrap_s, None, "s");
    row(&mut s, "CPU per GB carried", v.cpu_s_per_gb, None, "CPU-s");
    row(
        &mut s,
        "relay memory per idle circuit",
        v.bytes_per_idle_circuit,
        None,
        "bytes",
    );
    row(
        &mut s,
        "relay RSS at rest",
        v.relay_rss_at_rest / 1e6,
        None,
        "MB",
    );
    s.push_str(&format!(
        "\npayload {}\n",
        if r.payload_verified {
            "verified (SHA-256 matches)"
        } else {
            "MISMATCH"
        }
    ));
    s
}
