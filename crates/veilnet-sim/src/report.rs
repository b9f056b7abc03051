//! What a run reports, in JSON and as a short summary.

use serde::Serialize;

use crate::net::{
    multistream_bytes, Agreement, Counters, Kind, Sim, NOISE_FRAME, SEC, YAMUX_HEADER,
};
use crate::sybil::SybilReport;
use crate::SimConfig;

/// How directory traffic is counted.
pub const BYTES_MODEL: &str = "encoded SyncMessage bytes of every request and response, both \
directions, counted for sender and receiver; plus, per message, a modelled libp2p stream \
overhead: multistream-select negotiation and 12-byte yamux headers with 18 bytes of Noise \
framing per frame (negotiation, 16 KiB data frames, FIN); announcements (push) instead as frames on one long-lived stream per link and direction (a 4-byte length, yamux and Noise framing per 16 KiB, no empty answers; the stream's negotiation counted once); and, apart from exchanges (as \"connections\"), each link's setup between relays (2.4 KB each way, measured), each client fetch's connection (2.0 KB each way) and pings (62 bytes each way every 5 min by each end of a link); TCP/IP headers not counted";

/// Descriptors published less than this before the end of a run are left
/// out of the convergence figures (they had no time to spread).
pub const TRACK_MARGIN_US: u64 = 600 * SEC;

/// The figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The parameters.
    pub config: SimConfig,
    /// Honest relays at the start.
    pub relays: usize,
    /// Clients.
    pub clients: usize,
    /// Bytes of one descriptor as it travels (median over the run).
    pub descriptor_bytes: usize,
    /// Directory traffic per relay per hour after warm-up (bytes, sent and
    /// received).
    pub bytes_per_relay_hour: f64,
    /// Directory traffic per client per hour after warm-up.
    pub bytes_per_client_hour: f64,
    /// Of `bytes_per_relay_hour`, what a relay receives (downloads).
    pub bytes_received_per_relay_hour: f64,
    /// Of `bytes_per_client_hour`, what a client receives.
    pub bytes_received_per_client_hour: f64,
    /// The same two over the whole run, warm-up included.
    pub bytes_per_relay_hour_all: f64,
    /// See `bytes_per_relay_hour_all`.
    pub bytes_per_client_hour_all: f64,
    /// After warm-up, the share of all directory bytes by exchange kind.
    pub bytes_by_kind: Vec<(String, u64)>,
    /// How bytes are counted.
    pub bytes_model: &'static str,
    /// Modelled stream overhead of one message with an empty payload.
    pub overhead_per_message: u64,
    /// Seconds until a descriptor published after warm-up (and at least
    /// [`TRACK_MARGIN_US`] before the end) was held by 99 % of live relays:
    /// 99th percentile over those descriptors.
    pub convergence_s_p99: f64,
    /// The median of the same.
    pub convergence_s_p50: f64,
    /// The same two for 99 % of all live nodes (relays and clients).
    pub convergence_all_s_p99: f64,
    /// See `convergence_all_s_p99`.
    pub convergence_all_s_p50: f64,
    /// Descriptors published after warm-up.
    pub tracked_descriptors: usize,
    /// Of them, those that never reached 99 % of relays (superseded,
    /// expired or the run ended first).
    pub not_converged: usize,
    /// Of them, those that never reached 99 % of all nodes.
    pub not_converged_all: usize,
    /// Fraction of live nodes whose view at the cut (the relays they
    /// choose paths from: a held, unexpired descriptor published by the
    /// cut) equals the most common one, at the end.
    pub view_agreement: f64,
    /// The lowest of `view_agreement` over the hourly samples after the
    /// warm-up and the end.
    pub view_agreement_min_hourly: f64,
    /// Agreement at the end and each simulated hour, also among relays
    /// and clients alone and on exact descriptor sets.
    pub agreement_end: Agreement,
    /// Hourly samples.
    pub agreement_hourly: Vec<Agreement>,
    /// The most descriptors any live node holds at the end (the node's
    /// `Directory` holds at most [`veilnet_dir::MAX_NODES`]; the
    /// simulator's views are unbounded, so a figure above it means the
    /// node would be evicting).
    pub descriptors_held_max: usize,
    /// The most measurement reports any live node holds at the end.
    pub reports_held_max: usize,
    /// The Sybil figures, if the run had attacker relays.
    pub sybil: Option<SybilReport>,
    /// Counters.
    pub counters: Counters,
    /// Wall-clock seconds the run took.
    pub wall_s: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Builds the report of a finished run.
pub fn build(sim: &Sim, sybil: Option<SybilReport>, wall_s: f64) -> Report {
    let end = sim.end;
    let warm = sim.warmup;
    let (mut relay_bytes, mut relay_us, mut client_bytes, mut client_us) = (0u64, 0u64, 0u64, 0u64);
    let (mut relay_received, mut client_received) = (0u64, 0u64);
    let (mut relay_all, mut relay_all_us, mut client_all, mut client_all_us) =
        (0u64, 0u64, 0u64, 0u64);
    for n in &sim.nodes {
        let stop = n.died_us.unwrap_or(end).min(end);
        let steady_us = stop.saturating_sub(n.born_us.max(warm));
        let all_us = stop.saturating_sub(n.born_us);
        if n.relay.is_some() {
            relay_bytes += n.bytes[1];
            relay_received += n.received;
            relay_us += steady_us;
            relay_all += n.bytes[0] + n.bytes[1];
            relay_all_us += all_us;
        } else {
            client_bytes += n.bytes[1];
            client_received += n.received;
            client_us += steady_us;
            client_all += n.bytes[0] + n.bytes[1];
            client_all_us += all_us;
        }
    }
    let per_hour = |b: u64, us: u64| {
        if us == 0 {
            0.0
        } else {
            b as f64 / (us as f64 / (3600.0 * SEC as f64))
        }
    };
    let (mut conv, mut conv_all, mut tracked, mut missed, mut missed_all) =
        (Vec::new(), Vec::new(), 0, 0, 0);
    let mut sizes: Vec<usize> = Vec::with_capacity(sim.records.list.len());
    for r in &sim.records.list {
        if r.is_report() {
            continue;
        }
        sizes.push(r.bytes.len());
        let Some(born) = r.born_us else { continue };
        if born < warm || born + TRACK_MARGIN_US > end {
            continue;
        }
        tracked += 1;
        match r.reached_relays_us {
            Some(t) => conv.push(t as f64 / SEC as f64),
            None => missed += 1,
        }
        match r.reached_all_us {
            Some(t) => conv_all.push(t as f64 / SEC as f64),
            None => missed_all += 1,
        }
    }
    conv.sort_by(f64::total_cmp);
    conv_all.sort_by(f64::total_cmp);
    sizes.sort_unstable();
    let agreement_end = sim.agreement();
    let live = sim.nodes.iter().filter(|n| n.alive);
    let (descriptors_held_max, reports_held_max) = live.fold((0, 0), |(d, r), n| {
        let held = n.view.descriptors_held();
        (d.max(held), r.max(n.view.len() - held))
    });
    let clients = (sim.cfg.nodes as f64 * sim.cfg.client_fraction).round() as usize;
    Report {
        config: sim.cfg.clone(),
        relays: sim.cfg.nodes - clients,
        clients,
        descriptor_bytes: sizes.get(sizes.len() / 2).copied().unwrap_or(0),
        bytes_per_relay_hour: per_hour(relay_bytes, relay_us),
        bytes_per_client_hour: per_hour(client_bytes, client_us),
        bytes_received_per_relay_hour: per_hour(relay_received, relay_us),
        bytes_received_per_client_hour: per_hour(client_received, client_us),
        bytes_per_relay_hour_all: per_hour(relay_all, relay_all_us),
        bytes_per_client_hour_all: per_hour(client_all, client_all_us),
        bytes_by_kind: Kind::NAMES
            .iter()
            .zip(sim.counters.steady_bytes)
            .map(|(k, b)| ((*k).to_owned(), b))
            .chain([("connections".to_owned(), sim.counters.connection_bytes)])
            .collect(),
        bytes_model: BYTES_MODEL,
        overhead_per_message: (multistream_bytes() + 3 * (YAMUX_HEADER + NOISE_FRAME)) as u64,
        convergence_s_p99: percentile(&conv, 0.99),
        convergence_s_p50: percentile(&conv, 0.5),
        convergence_all_s_p99: percentile(&conv_all, 0.99),
        convergence_all_s_p50: percentile(&conv_all, 0.5),
        tracked_descriptors: tracked,
        not_converged: missed,
        not_converged_all: missed_all,
        view_agreement: agreement_end.cut_all,
        view_agreement_min_hourly: sim
            .samples
            .iter()
            .filter(|a| a.hour > sim.cfg.warmup_hours)
            .map(|a| a.cut_all)
            .fold(agreement_end.cut_all, f64::min),
        agreement_end,
        agreement_hourly: sim.samples.clone(),
        descriptors_held_max,
        reports_held_max,
        sybil,
        counters: sim.counters.clone(),
        wall_s,
    }
}

impl Report {
    /// A few lines for people.
    pub fn summary(&self) -> String {
        let mb = |b: f64| b / 1e6;
        let mut s = format!(
            "{} relays, {} clients, {} h (first {} h warm-up), churn {}/h, descriptor {} B\n\
             directory traffic (modelled wire bytes): {:.3} MB per relay-hour, {:.3} MB per client-hour \
             (received of it: {:.3} / {:.3}; whole run: {:.3} / {:.3})\n\
             convergence to 99% of relays: p50 {:.1} s, p99 {:.1} s ({} descriptors, {} never); \
             to 99% of all nodes: p50 {:.1} s, p99 {:.1} s\n\
             view agreement at the cut, at the end: {:.4} of nodes (relays {:.4}, clients {:.4}; lowest hourly {:.4})\n\
             held relays at the end: {:.4} of nodes agree (relays {:.4}, clients {:.4}; exact descriptor sets {:.4})\n\
             largest view at the end: {} descriptors (a node's directory holds at most {}), {} reports\n",
            self.relays,
            self.clients,
            self.config.hours,
            self.config.warmup_hours,
            self.config.churn,
            self.descriptor_bytes,
            mb(self.bytes_per_relay_hour),
            mb(self.bytes_per_client_hour),
            mb(self.bytes_received_per_relay_hour),
            mb(self.bytes_received_per_client_hour),
            mb(self.bytes_per_relay_hour_all),
            mb(self.bytes_per_client_hour_all),
            self.convergence_s_p50,
            self.convergence_s_p99,
            self.tracked_descriptors,
            self.not_converged,
            self.convergence_all_s_p50,
            self.convergence_all_s_p99,
            self.view_agreement,
            self.agreement_end.cut_relays,
            self.agreement_end.cut_clients,
            self.view_agreement_min_hourly,
            self.agreement_end.all,
            self.agreement_end.relays,
            self.agreement_end.clients,
            self.agreement_end.digests_all,
            self.descriptors_held_max,
            veilnet_dir::MAX_NODES,
            self.reports_held_max,
        );
        let total: u64 = self.bytes_by_kind.iter().map(|(_, b)| b).sum();
        s.push_str("steady-state bytes by exchange:");
        for (k, b) in &self.bytes_by_kind {
            s.push_str(&format!(
                " {k} {:.1}%",
                100.0 * *b as f64 / total.max(1) as f64
            ));
        }
        let records: u64 = self.counters.steady_record_bytes.iter().sum();
        let reports: u64 = self.counters.steady_report_bytes.iter().sum();
        s.push_str(&format!(
            "; the records themselves {:.1}% of all (measurement reports {:.1}%; {} reports published)\n",
            100.0 * records as f64 / total.max(1) as f64,
            100.0 * reports as f64 / total.max(1) as f64,
            self.counters.reports,
        ));
        if let Some(y) = &self.sybil {
            s.push_str(&format!(
                "sybil: {} of {} relays; guard and exit both the attacker's in {:.4} of {} circuits \
                 (fair share by real bandwidth {:.6}; attacker's share of selection weight {:.4})\n",
                y.sybils_in_directory,
                y.relays_in_directory,
                y.sybil_circuit_fraction,
                y.circuits - y.circuits_failed,
                y.sybil_fair_share,
                y.sybil_weight_share,
            ));
        }
        s.push_str(&format!(
            "{} events, {} exchanges, {:.1} s wall\n",
            self.counters.events,
            self.counters.exchanges.iter().sum::<u64>(),
            self.wall_s
        ));
        s
    }
}
