#![doc = include_str!("../README.md")]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing::info;
use veilnet_node::{Node, NodeOptions};
use veilnet_testnet::{Testnet, TestnetOptions};

#[derive(Parser)]
#[command(
    name = "veilnet",
    version,
    about = "A decentralized onion-routing proxy network"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a node: identity and onion keys (mode 0600) and a commented config.toml.
    Init {
        /// Where the node keeps its keys and state.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Run a node from its config file.
    Node {
        /// The node's config.toml.
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a local test network on loopback, with a SOCKS5 port to use at once.
    Testnet {
        /// Relays to start.
        #[arg(long, default_value_t = 8)]
        nodes: usize,
        /// How many of the relays are exits (default: a quarter, at least 1).
        #[arg(long)]
        exits: Option<usize>,
        /// Hops per circuit (1..=5).
        #[arg(long, default_value_t = 3)]
        hops: u8,
        /// The SOCKS5 proxy address.
        #[arg(long, default_value = "127.0.0.1:9050")]
        socks: SocketAddr,
        /// An HTTP CONNECT proxy address.
        #[arg(long)]
        http_proxy: Option<SocketAddr>,
        /// The control API address (JSON over HTTP).
        #[arg(long)]
        control: Option<SocketAddr>,
        /// Danger: let the exits reach private and loopback addresses (for local testing).
        #[arg(long)]
        allow_private_targets: bool,
        /// Milliseconds between two directory reconciliation rounds of
        /// each node (a real node's default is 600000; a test network
        /// converges faster with less).
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(50..=600_000))]
        gossip_interval_ms: u64,
        /// Turn peer measurement off: every relay is used at once at the
        /// bandwidth it advertises. On (the default), relays measure each
        /// other every 20 s and a relay is used once 2 measurers reached
        /// it, which takes a few seconds after start.
        #[arg(long)]
        no_measure: bool,
    },
    /// Measure a local network of node processes against direct connections.
    Bench(veilnet_bench::BenchOptions),
    /// Show a running node's directory and circuits.
    Status {
        /// The node's control API address.
        #[arg(long)]
        control: SocketAddr,
    },
}

fn loopback_only(what: &str, addr: SocketAddr) -> Result<(), String> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(format!(
            "{what} must listen on a loopback address, not {addr}"
        ))
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Init { data_dir } => {
            let report = veilnet_config::init_data_dir(&data_dir).map_err(|e| e.to_string())?;
            println!(
                "created node {} in {}",
                report.peer_id,
                report.data_dir.display()
            );
            if let Some(cfg) = report.config_written {
                println!(
                    "edit {} and run: veilnet node --config {}",
                    cfg.display(),
                    cfg.display()
                );
            }
            Ok(())
        }
        Command::Node { config } => {
            let cfg = veilnet_config::Config::load(&config).map_err(|e| e.to_string())?;
            let keys = veilnet_config::load_keys(&cfg.data_dir, veilnet_config::unix_now())
                .map_err(|e| e.to_string())?;
            let node = Node::start(NodeOptions::new(cfg, keys))
                .await
                .map_err(|e| e.to_string())?;
            println!("veilnet node {} running", node.peer_id);
            match node.link_addr {
                Some(a) => println!("  link     {a}"),
                None => println!("  link     none (a pure client listens for no links)"),
            }
            for a in &node.p2p_addrs {
                println!("  p2p      {a}/p2p/{}", node.peer_id);
            }
            if let Some(a) = node.socks_addr {
                println!("  socks5   {a}");
            }
            if let Some(a) = node.http_addr {
                println!("  http     {a}");
            }
            if let Some(a) = node.control_addr() {
                println!("  control  {a}");
            }
            shutdown_signal().await;
            info!("shutting down");
            node.shutdown().await;
            Ok(())
        }
        Command::Testnet {
            nodes,
            exits,
            hops,
            socks,
            http_proxy,
            control,
            allow_private_targets,
            gossip_interval_ms,
            no_measure,
        } => {
            loopback_only("--socks", socks)?;
            if let Some(a) = http_proxy {
                loopback_only("--http-proxy", a)?;
            }
            if let Some(a) = control {
                loopback_only("--control", a)?;
            }
            let opts = TestnetOptions {
                nodes,
                exits: exits.unwrap_or((nodes / 4).max(1)),
                hops,
                socks: Some(socks),
                http_proxy,
                control,
                allow_private_targets,
                gossip_interval: Duration::from_millis(gossip_interval_ms),
                measure: (!no_measure).then(veilnet_config::MeasureConfig::test_network),
                ..TestnetOptions::default()
            };
            let started = std::time::Instant::now();
            let net = Testnet::start(opts.clone())
                .await
                .map_err(|e| e.to_string())?;
            let ready = tokio::select! {
                r = net.wait_ready(Duration::from_secs(60)) => r.map_err(|e| e.to_string()),
                _ = shutdown_signal() => Err("interrupted".to_string()),
            };
            if let Err(e) = ready {
                net.shutdown().await;
                return Err(e);
            }
            let c = &net.client;
            let mut line = format!(
                "veilnet testnet ready in {:.1}s: {} nodes ({} exits), socks5://{}",
                started.elapsed().as_secs_f64(),
                opts.nodes,
                opts.exits,
                c.socks_addr.map(|a| a.to_string()).unwrap_or_default()
            );
            if let Some(a) = c.http_addr {
                line.push_str(&format!(", http-connect://{a}"));
            }
            if let Some(a) = c.control_addr() {
                line.push_str(&format!(", control http://{a}"));
            }
            println!("{line}");
            println!(
                "try: curl --socks5-hostname {} https://example.com/   (Ctrl-C stops)",
                socks
            );
            shutdown_signal().await;
            println!("stopping the test network");
            net.shutdown().await;
            Ok(())
        }
        Command::Bench(mut opts) => {
            opts.exe =
                std::env::current_exe().map_err(|e| format!("cannot find our binary: {e}"))?;
            let report = veilnet_bench::run(opts).await?;
            print!("{}", veilnet_bench::render(&report));
            if !report.payload_verified {
                return Err("payload mismatch".into());
            }
            Ok(())
        }
        Command::Status { control } => {
            let report = veilnet_control::status_report(control)
                .await
                .map_err(|e| e.to_string())?;
            print!("{report}");
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("veilnet: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Printed once, whatever RUST_LOG filters (not also logged).
            eprintln!("veilnet: {e}");
            ExitCode::FAILURE
        }
    }
}
