//! A network of separate `veilnet node` OS processes, configured the way an
//! operator would (`veilnet init`, then an edited config.toml), used through
//! the client's SOCKS5 port and control API, and stopped with SIGTERM.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::time::timeout;
use veilnet_control::{get_json, CircuitView, NodeView};
use veilnet_testnet::http;

const BIN: &str = env!("CARGO_BIN_EXE_veilnet");
const NODES: usize = 5;
/// Node 4 is the user's client; nodes 1 and 2 are exits.
const CLIENT: usize = 4;
const EXITS: [usize; 2] = [1, 2];
const MIB: u64 = 1024 * 1024;

/// A child process that is killed (and reaped) when dropped.
struct ChildGuard {
    name: String,
    child: Option<Child>,
}

impl ChildGuard {
    fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Polls for the exit status for up to `limit`.
    async fn wait_for_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if start.elapsed() > limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            eprintln!("killed {} (pid {})", self.name, c.id());
        }
    }
}

/// A temporary directory, removed on drop unless the test failed (then its
/// logs are kept for inspection).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("keeping {} for inspection", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn free_port() -> u16 {
    veilnet_testnet::ports::pick_port().unwrap()
}

struct Ports {
    p2p: u16,
    link: u16,
}

fn config_toml(i: usize, ports: &Ports, bootstrap: &str, socks: u16, control: u16) -> String {
    let client = i == CLIENT;
    let exit = EXITS.contains(&i);
    let bootstrap = if bootstrap.is_empty() {
        "[]".to_string()
    } else {
        format!("[\"{bootstrap}\"]")
    };
    format!(
        r#"# written by tests/processes.rs
data_dir = "."

[node]
p2p_listen = ["/ip4/127.0.0.1/tcp/{p2p}"]
link_listen = "127.0.0.1:{link}"
advertise = []
bootstrap = {bootstrap}
region = "ZZ"
bandwidth = 10_000_000
family = []
relay = {relay}
danger_allow_private_links = true

[client]
socks = "{socks}"
http_proxy = ""
hops = 3
max_circuit_dirtiness_secs = 600
num_guards = 3
danger_allow_remote = false

[exit]
enabled = {exit}
danger_allow_private_targets = {exit}
policy = []

[control]
listen = "{control}"
danger_allow_remote = false

# A private test network on one host: short measurement periods, usable
# once 2 measurers reached a relay, full weight at once.
[measure]
period_secs = 20
min_measurers = 2
ramp_secs = 0
duration_ms = 1000
max_rate = 8_000_000

# Reconcile often; every record counts at once.
[directory]
exchange_interval_ms = 500
announce_batch_ms = 1000
cut_every_secs = 1
cut_margin_secs = 0
"#,
        p2p = ports.p2p,
        link = ports.link,
        relay = !client,
        socks = if client {
            format!("127.0.0.1:{socks}")
        } else {
            String::new()
        },
        control = if client {
            format!("127.0.0.1:{control}")
        } else {
            String::new()
        },
    )
}

/// `veilnet init --data-dir dir`; returns the peer id it printed.
fn init_node(dir: &Path) -> String {
    let out = Command::new(BIN)
        .arg("init")
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "veilnet init failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("created node "))
        .unwrap_or_else(|| panic!("unexpected init output: {stdout}"));
    let peer = line.split(" in ").next().unwrap().to_string();
    assert!(peer.starts_with("12D3KooW"), "peer id {peer:?}");
    peer
}

fn spawn_node(base: &Path, i: usize) -> ChildGuard {
    let dir = base.join(format!("node-{i}"));
    let out = std::fs::File::create(base.join(format!("node-{i}.stdout"))).unwrap();
    let err = std::fs::File::create(base.join(format!("node-{i}.stderr"))).unwrap();
    let child = Command::new(BIN)
        .arg("node")
        .arg("--config")
        .arg(dir.join("config.toml"))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap();
    ChildGuard {
        name: format!("node {i}"),
        child: Some(child),
    }
}

/// The TCP ports process `pid` listens on (IPv4 and IPv6), from its open
/// socket inodes and the kernel's socket tables.
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().to_string();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is f[1] ("ADDR:PORT" in hex), st is f[3] (0A:
            // listen), inode is f[9].
            if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                let port = f[1].rsplit(':').next().unwrap();
                ports.push(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports.sort_unstable();
    ports
}

fn log_tail(base: &Path, i: usize) -> String {
    let s = std::fs::read_to_string(base.join(format!("node-{i}.stderr"))).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_node_processes_carry_a_download_and_stop_on_sigterm() {
    let base = TempDir(std::env::temp_dir().join(format!(
        "veilnet-processes-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    )));
    std::fs::create_dir_all(&base.0).unwrap();
    let base_path = base.0.clone();

    let peers: Vec<String> = (0..NODES)
        .map(|i| init_node(&base_path.join(format!("node-{i}"))))
        .collect();
    let ports: Vec<Ports> = (0..NODES)
        .map(|_| Ports {
            p2p: free_port(),
            link: free_port(),
        })
        .collect();
    let socks_port = free_port();
    let control_port = free_port();
    let bootstrap = format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", ports[0].p2p, peers[0]);
    for (i, p) in ports.iter().enumerate() {
        let b = if i == 0 { "" } else { bootstrap.as_str() };
        let toml = config_toml(i, p, b, socks_port, control_port);
        std::fs::write(base_path.join(format!("node-{i}/config.toml")), toml).unwrap();
    }

    // Node 0 first (everyone bootstraps from it), then the others.
    let mut children = vec![spawn_node(&base_path, 0)];
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 1..NODES {
        children.push(spawn_node(&base_path, i));
    }

    let control: SocketAddr = ([127, 0, 0, 1], control_port).into();
    let socks: SocketAddr = ([127, 0, 0, 1], socks_port).into();
    let run = async {
        // The client's directory lists the four relays; the client itself
        // publishes nothing (clients stay out of the directory).
        let start = Instant::now();
        let nodes = loop {
            if let Ok(nodes) = get_json::<Vec<NodeView>>(control, "/v1/nodes").await {
                // Listed, and measured by the others.
                if nodes.len() == NODES - 1 && nodes.iter().all(|n| n.reachable == Some(true)) {
                    break nodes;
                }
            }
            for (i, c) in children.iter_mut().enumerate() {
                if let Some(Ok(Some(status))) = c.child.as_mut().map(Child::try_wait) {
                    panic!(
                        "node {i} exited early ({status}):\n{}",
                        log_tail(&base_path, i)
                    );
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the client does not list {NODES} measured nodes after 60 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        eprintln!(
            "client knows all nodes, measured, after {:?}",
            start.elapsed()
        );
        let mut listed: Vec<&str> = nodes.iter().map(|n| n.peer_id.as_str()).collect();
        listed.sort();
        let mut want: Vec<&str> = peers
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != CLIENT)
            .map(|(_, p)| p.as_str())
            .collect();
        want.sort();
        assert_eq!(listed, want, "the directory holds exactly our nodes");
        let me = &peers[CLIENT];
        for n in &nodes {
            let i = peers.iter().position(|p| *p == n.peer_id).unwrap();
            assert_eq!(n.is_self, i == CLIENT, "{n:?}");
            assert_eq!(n.relay, i != CLIENT, "{n:?}");
            assert_eq!(n.exit, EXITS.contains(&i), "{n:?}");
            assert_eq!(
                n.link_addrs,
                vec![format!("127.0.0.1:{}", ports[i].link)],
                "{n:?}"
            );
            // Advertised as configured; loopback relays are not capped, so
            // the weight is the measured figure (at most max_rate), capped
            // by the advertised one.
            assert_eq!(n.advertised_bandwidth, 10_000_000, "{n:?}");
            let measured = n.measured_bandwidth.unwrap();
            assert!(measured > 0 && measured <= 9_000_000, "{n:?}");
            assert_eq!(n.weight, measured, "{n:?}");
            assert!(n.measured_by >= 2, "{n:?}");
        }

        // 1 MiB through three hops, retried while circuits are being built.
        let target = http::target().await.unwrap();
        http::download(socks, target, MIB, Duration::from_secs(20))
            .await
            .unwrap();

        // The control API shows a 3-hop circuit of distinct relays, not the client.
        let circuits: Vec<CircuitView> = get_json(control, "/v1/circuits").await.unwrap();
        let good = circuits.iter().find(|c| {
            let mut h = c.hops.clone();
            h.sort();
            h.dedup();
            c.hops.len() == 3 && h.len() == 3 && !c.hops.contains(me)
        });
        assert!(good.is_some(), "no proper 3-hop circuit in {circuits:?}");
        for c in &circuits {
            assert!(!c.hops.contains(me), "the client is a hop of {c:?}");
            assert!(c.hops.iter().all(|h| peers.contains(h)), "{c:?}");
        }

        // The pure client listens on its SOCKS port and control API only:
        // its config names link and p2p ports too, and they stay closed, so
        // no crawler can find it. Every relay listens on its own two.
        let mut want = vec![socks_port, control_port];
        want.sort_unstable();
        assert_eq!(listening_ports(children[CLIENT].pid()), want);
        // A relay that is measuring another also listens, on loopback and
        // for one sample (under a second), for its own measurement sink:
        // such a port comes and goes.
        let mut relay = vec![ports[0].p2p, ports[0].link];
        relay.sort_unstable();
        let mut seen = listening_ports(children[0].pid());
        for _ in 0..50 {
            if seen == relay {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            seen = listening_ports(children[0].pid());
        }
        assert_eq!(seen, relay);
    };
    timeout(Duration::from_secs(120), run)
        .await
        .expect("test timed out");

    // SIGTERM: every node shuts down cleanly within 10 s.
    for c in &children {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(c.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM {} failed", c.pid());
    }
    for (i, c) in children.iter_mut().enumerate() {
        let status = c.wait_for_exit(Duration::from_secs(10)).await;
        let status = status.unwrap_or_else(|| {
            panic!(
                "node {i} still runs 10 s after SIGTERM:\n{}",
                log_tail(&base_path, i)
            )
        });
        assert!(
            status.success(),
            "node {i} exited with {status} after SIGTERM:\n{}",
            log_tail(&base_path, i)
        );
    }
    for i in 0..NODES {
        let log = std::fs::read_to_string(base_path.join(format!("node-{i}.stderr"))).unwrap();
        assert!(log.contains("shutting down"), "node {i} log:\n{log}");
        assert!(!log.contains("panicked"), "node {i} panicked:\n{log}");
    }
}
