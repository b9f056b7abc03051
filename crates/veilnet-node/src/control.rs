//! The control API's views of a running node.

use std::sync::atomic::Ordering;
use std::sync::Weak;

use veilnet_circmgr::PooledCircuit;
use veilnet_control::{
    CircuitView, ControlSource, EquivocationView, GuardView, NodeView, StatusView,
    EQUIVOCATED_DESCRIPTOR, EQUIVOCATED_REPORT,
};
use veilnet_dir::Descriptor;

use crate::{lock, Node, VERSION};

/// The control API's view of a node (weak, so the API does not keep the node alive).
pub(crate) struct NodeControl(pub(crate) Weak<Node>);

impl ControlSource for NodeControl {
    fn status(&self) -> StatusView {
        let Some(n) = self.0.upgrade() else {
            return StatusView {
                peer_id: String::new(),
                version: VERSION.to_string(),
                uptime_secs: 0.0,
                known_nodes: 0,
                open_circuits: 0,
                socks: None,
                http_proxy: None,
                measurements: 0,
                measurement_bytes: 0,
            };
        };
        StatusView {
            peer_id: n.peer_id.to_string(),
            version: VERSION.to_string(),
            uptime_secs: n.uptime().as_secs_f64(),
            known_nodes: n.known_nodes(),
            open_circuits: n.circuits.open_count(),
            socks: n.socks_addr.map(|a| a.to_string()),
            http_proxy: n.http_addr.map(|a| a.to_string()),
            measurements: n.measure_stats.measurements.load(Ordering::Relaxed),
            measurement_bytes: n.measure_stats.bytes.load(Ordering::Relaxed),
        }
    }

    fn nodes(&self) -> Vec<NodeView> {
        let Some(n) = self.0.upgrade() else {
            return Vec::new();
        };
        let dir = lock(&n.directory);
        let weights = dir.weights();
        let measuring = dir.measurements().is_some();
        dir.iter()
            .map(|d| {
                let mut v = node_view(d, weights.get(&d.peer_id), d.peer_id == n.peer_id);
                if measuring {
                    let m = weights.measured(&d.peer_id);
                    v.measured_bandwidth = m.filter(|m| m.reached_by > 0).map(|m| m.bandwidth);
                    v.reachable = Some(m.is_some_and(|m| m.reachable));
                    v.measured_by = m.map_or(0, |m| m.observed_by);
                }
                v
            })
            .collect()
    }

    fn equivocations(&self) -> Vec<EquivocationView> {
        let Some(n) = self.0.upgrade() else {
            return Vec::new();
        };
        let dir = lock(&n.directory);
        let descriptors = dir.equivocations().map(|e| EquivocationView {
            peer_id: e.peer.to_string(),
            kind: EQUIVOCATED_DESCRIPTOR.into(),
            seq: Some(e.seq),
            epoch: None,
            detected: e.detected,
            expires: e.expires,
            digests: e.digests.iter().map(hex::encode).collect(),
            descriptors: e
                .descriptors
                .iter()
                .map(|d| hex::encode(d.to_bytes()))
                .collect(),
            reports: Vec::new(),
        });
        let reports = dir
            .measurements()
            .into_iter()
            .flat_map(|m| m.forks())
            .map(|f| EquivocationView {
                peer_id: f.measurer.to_string(),
                kind: EQUIVOCATED_REPORT.into(),
                seq: None,
                epoch: Some(f.epoch),
                detected: f.detected,
                expires: f.expires,
                digests: f.digests.iter().map(hex::encode).collect(),
                descriptors: Vec::new(),
                reports: f.records.iter().map(hex::encode).collect(),
            });
        descriptors.chain(reports).collect()
    }

    fn circuits(&self) -> Vec<CircuitView> {
        self.0
            .upgrade()
            .map(|n| n.circuits.pooled().iter().map(circuit_view).collect())
            .unwrap_or_default()
    }

    fn guards(&self) -> Vec<GuardView> {
        let Some(n) = self.0.upgrade() else {
            return Vec::new();
        };
        n.circuits
            .guards()
            .into_iter()
            .map(|g| GuardView {
                peer_id: g.peer.to_string(),
                primary: g.primary,
                confirmed: g.confirmed,
                listed: g.listed,
                reachable: g.reachable,
                unreachable_since: g.unreachable_since,
                circuits_attempted: g.attempts,
                circuits_built: g.successes,
                flagged: g.flagged,
            })
            .collect()
    }
}

fn node_view(d: &Descriptor, weight: u64, is_self: bool) -> NodeView {
    NodeView {
        peer_id: d.peer_id.to_string(),
        relay: d.roles.relay,
        exit: d.roles.exit,
        link_addrs: d.link_addrs.iter().map(|a| a.to_string()).collect(),
        p2p_addrs: d.p2p_addrs.iter().map(|a| a.to_string()).collect(),
        region: d.region.clone(),
        advertised_bandwidth: d.bandwidth,
        measured_bandwidth: None,
        reachable: None,
        measured_by: 0,
        weight,
        version: d.version.clone(),
        is_self,
    }
}

fn circuit_view(p: &PooledCircuit) -> CircuitView {
    let info = p.circuit.info();
    let state = match (info.open, p.dirty) {
        (false, _) => "closed",
        (true, true) => "dirty",
        (true, false) => "open",
    };
    CircuitView {
        id: info.id,
        state: state.to_string(),
        age_secs: info.age.as_secs_f64(),
        hops: info.hops.iter().map(|h| h.to_string()).collect(),
        streams: info.streams,
        isolation: p.isolation.label(),
        build_ms: info.build_time.as_secs_f64() * 1000.0,
    }
}
