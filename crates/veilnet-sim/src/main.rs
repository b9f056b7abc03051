//! `veilnet-sim`: simulations of the veilnet network in one process.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use veilnet_sim::{run_directory, SimConfig};

#[derive(Parser)]
#[command(
    name = "veilnet-sim",
    about = "Simulations of the veilnet network in one process",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Directory distribution: descriptors, gossip, path selection.
    Directory(DirectoryArgs),
}

#[derive(Args)]
struct DirectoryArgs {
    /// Honest nodes (relays and clients).
    #[arg(long, default_value_t = SimConfig::default().nodes)]
    nodes: usize,
    /// Fraction of --nodes that are pure clients.
    #[arg(long, default_value_t = SimConfig::default().client_fraction)]
    clients: f64,
    /// Simulated hours.
    #[arg(long, default_value_t = SimConfig::default().hours)]
    hours: f64,
    /// Hours left out of the steady-state figures.
    #[arg(long, default_value_t = SimConfig::default().warmup_hours)]
    warmup_hours: f64,
    /// Fraction of relays per hour that leave (as many join).
    #[arg(long, default_value_t = SimConfig::default().churn)]
    churn: f64,
    /// Of the relays that leave, the fraction that restart with the
    /// directory they held (their cache) instead of a new relay joining.
    #[arg(long, default_value_t = SimConfig::default().restarts)]
    restarts: f64,
    /// Mean time a restarting relay is away, minutes (exponential, at most
    /// a day).
    #[arg(long, default_value_t = SimConfig::default().restart_mean_mins)]
    restart_mean_mins: f64,
    /// Above 0: a client's fetch reconciles only what was published since
    /// its previous fetch began less this many seconds, except every
    /// --client-full-every-th fetch.
    #[arg(long, default_value_t = SimConfig::default().client_recent_s)]
    client_recent_s: u64,
    /// See --client-recent-s.
    #[arg(long, default_value_t = SimConfig::default().client_full_every)]
    client_full_every: u32,
    /// Seed of every random choice.
    #[arg(long, default_value_t = SimConfig::default().seed)]
    seed: u64,
    /// Seconds between a relay's anti-entropy rounds (the node's, `[directory] exchange_interval_ms`, is 600).
    #[arg(long, default_value_t = SimConfig::default().exchange_interval_s)]
    exchange_interval: f64,
    /// Peers per anti-entropy round (the node's GOSSIP_FANOUT is 3).
    #[arg(long, default_value_t = SimConfig::default().exchange_peers)]
    exchange_peers: usize,
    /// Seconds between a client's anti-entropy exchanges.
    #[arg(long, default_value_t = SimConfig::default().client_interval_s)]
    client_interval: f64,
    /// Neighbours a relay announces new records to.
    #[arg(long, default_value_t = SimConfig::default().push_fanout)]
    push_fanout: usize,
    /// How many of those go on links the relay chose (the node: one).
    #[arg(long, default_value_t = SimConfig::default().push_own)]
    push_own: usize,
    /// Milliseconds a relay gathers new records before announcing them (the node: 1000).
    #[arg(long, default_value_t = SimConfig::default().push_delay_ms)]
    push_delay_ms: u64,
    /// Leave out of `want` what was asked of another peer in the last 10 s
    /// (as the node does).
    #[arg(long, default_value_t = SimConfig::default().dedup_wants, action = clap::ArgAction::Set)]
    dedup_wants: bool,
    /// Announce on one long-lived stream per link (as the node does);
    /// false: one request-response exchange per announcement.
    #[arg(long, default_value_t = SimConfig::default().push_stream, action = clap::ArgAction::Set)]
    push_stream: bool,
    /// Links each relay opens.
    #[arg(long, default_value_t = SimConfig::default().degree)]
    degree: usize,
    /// Minutes between a relay's publications (the node's, veilnet_dir::REPUBLISH_EVERY, is 1080).
    #[arg(long, default_value_t = SimConfig::default().republish_mins)]
    republish_mins: f64,
    /// Seconds per slot of the cut nodes take their view at (the public network's: 3600).
    #[arg(long, default_value_t = SimConfig::default().cut_every_s)]
    cut_every: u64,
    /// Seconds before a slot a record must be published to count in it (300).
    #[arg(long, default_value_t = SimConfig::default().cut_margin_s)]
    cut_margin: u64,
    /// Shortest one-way latency (ms).
    #[arg(long, default_value_t = SimConfig::default().latency_min_ms)]
    latency_min_ms: u64,
    /// Longest one-way latency (ms).
    #[arg(long, default_value_t = SimConfig::default().latency_max_ms)]
    latency_max_ms: u64,
    /// Fraction of honest relays that are exits.
    #[arg(long, default_value_t = SimConfig::default().exit_fraction)]
    exit_fraction: f64,
    /// Attacker relays, on top of --nodes.
    #[arg(long, default_value_t = 0)]
    sybils: usize,
    /// /24 subnets the attacker's relays are on.
    #[arg(long, default_value_t = SimConfig::default().sybil_subnets)]
    sybil_subnets: usize,
    /// The attacker's real bandwidth as a fraction of the honest relays'.
    #[arg(long, default_value_t = SimConfig::default().sybil_bandwidth)]
    sybil_bandwidth: f64,
    /// What each attacker relay advertises (bytes/s; 0: its real bandwidth).
    #[arg(long, default_value_t = SimConfig::default().sybil_advertised)]
    sybil_advertised: u64,
    /// Descriptors the attacker adds at addresses it does not hold, to
    /// measure for its relays (needs --sybils).
    #[arg(long, default_value_t = 0)]
    fake_measurers: usize,
    /// Weigh relays by (modelled) peer measurement for the Sybil figure;
    /// false: by what they advertise.
    #[arg(long, default_value_t = SimConfig::default().measure, action = clap::ArgAction::Set)]
    measure: bool,
    /// Circuits drawn for the Sybil figure.
    #[arg(long, default_value_t = SimConfig::default().circuits)]
    circuits: usize,
    /// Circuits per simulated client (each with its own guard set).
    #[arg(long, default_value_t = SimConfig::default().circuits_per_client)]
    circuits_per_client: usize,
    /// Encode and decode every message (slow).
    #[arg(long)]
    check_wire: bool,
    /// Announce to most of the relays that chose us and one we chose, as
    /// the node does; false: to --push-fanout of all, --push-own of them on
    /// links we chose.
    #[arg(long, default_value_t = SimConfig::default().push_inbound, action = clap::ArgAction::Set)]
    push_inbound: bool,
    /// Relays publish measurement reports, which travel with the
    /// descriptors (as the node's do).
    #[arg(long, default_value_t = SimConfig::default().reports, action = clap::ArgAction::Set)]
    reports: bool,
    /// Seconds per measurement period (the public network's: 43200).
    #[arg(long, default_value_t = SimConfig::default().measure_period_s)]
    measure_period: u64,
    /// Measurement periods whose reports count (the public network's: 4).
    #[arg(long, default_value_t = SimConfig::default().measure_window)]
    measure_window: u32,
    /// Write the report here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

impl DirectoryArgs {
    fn config(&self) -> SimConfig {
        SimConfig {
            nodes: self.nodes,
            client_fraction: self.clients,
            hours: self.hours,
            warmup_hours: self.warmup_hours,
            churn: self.churn,
            restarts: self.restarts,
            restart_mean_mins: self.restart_mean_mins,
            client_recent_s: self.client_recent_s,
            client_full_every: self.client_full_every,
            seed: self.seed,
            exchange_interval_s: self.exchange_interval,
            exchange_peers: self.exchange_peers,
            client_interval_s: self.client_interval,
            push_fanout: self.push_fanout,
            push_own: self.push_own,
            push_delay_ms: self.push_delay_ms,
            dedup_wants: self.dedup_wants,
            push_stream: self.push_stream,
            degree: self.degree,
            republish_mins: self.republish_mins,
            cut_every_s: self.cut_every,
            cut_margin_s: self.cut_margin,
            latency_min_ms: self.latency_min_ms,
            latency_max_ms: self.latency_max_ms,
            exit_fraction: self.exit_fraction,
            sybils: self.sybils,
            sybil_subnets: self.sybil_subnets,
            sybil_bandwidth: self.sybil_bandwidth,
            sybil_advertised: self.sybil_advertised,
            fake_measurers: self.fake_measurers,
            measure: self.measure,
            circuits: self.circuits,
            circuits_per_client: self.circuits_per_client,
            check_wire: self.check_wire,
            push_inbound: self.push_inbound,
            reports: self.reports,
            measure_period_s: self.measure_period,
            measure_window: self.measure_window,
        }
    }
}

fn main() -> ExitCode {
    let Command::Directory(args) = Cli::parse().command;
    let report = match run_directory(&args.config()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("veilnet-sim: {e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", report.summary());
    if let Some(path) = &args.json {
        let json = match serde_json::to_string_pretty(&report) {
            Ok(j) => j,
            Err(e) => {
                eprintln!("veilnet-sim: encoding the report: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Err(e) = std::fs::write(path, json + "\n") {
            eprintln!("veilnet-sim: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
