//! A fixed control source for the tests of this crate.

use crate::view::{
    CircuitView, ControlSource, EquivocationView, GuardView, NodeView, StatusView,
    EQUIVOCATED_DESCRIPTOR, EQUIVOCATED_REPORT,
};

pub(crate) const PEER_A: &str = "12D3KooWAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
pub(crate) const PEER_B: &str = "12D3KooWBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";
pub(crate) const PEER_C: &str = "12D3KooWCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC";

pub(crate) struct FakeSource;

pub(crate) fn status() -> StatusView {
    StatusView {
        peer_id: PEER_A.into(),
        version: "0.1.0".into(),
        uptime_secs: 3723.5,
        known_nodes: 3,
        open_circuits: 1,
        socks: Some("127.0.0.1:9050".into()),
        http_proxy: None,
        measurements: 0,
        measurement_bytes: 0,
    }
}

pub(crate) fn nodes() -> Vec<NodeView> {
    let node = |peer: &str, relay, exit, bandwidth, is_self| NodeView {
        peer_id: peer.into(),
        relay,
        exit,
        link_addrs: vec!["192.0.2.1:7000".into(), "192.0.2.1:7001".into()],
        p2p_addrs: vec!["/ip4/192.0.2.1/tcp/4001".into()],
        region: "eu".into(),
        advertised_bandwidth: bandwidth,
        measured_bandwidth: None,
        reachable: None,
        measured_by: 0,
        weight: bandwidth,
        version: "0.1.0".into(),
        is_self,
    };
    vec![
        node(PEER_A, true, false, 12_500_000, true),
        node(PEER_B, true, true, 999, false),
        node(PEER_C, false, true, 2_000, false),
    ]
}

pub(crate) fn circuits() -> Vec<CircuitView> {
    vec![
        CircuitView {
            id: 7,
            state: "open".into(),
            age_secs: 63.2,
            hops: vec![PEER_A.into(), PEER_B.into(), PEER_C.into()],
            streams: 2,
            isolation: Some("iso-3".into()),
            build_ms: 4.5,
        },
        CircuitView {
            id: 8,
            state: "building".into(),
            age_secs: 0.4,
            hops: vec![],
            streams: 0,
            isolation: None,
            build_ms: 0.0,
        },
    ]
}

pub(crate) fn equivocations() -> Vec<EquivocationView> {
    vec![
        EquivocationView {
            peer_id: "12D3KooWEquivocator".into(),
            kind: EQUIVOCATED_DESCRIPTOR.into(),
            seq: Some(7),
            epoch: None,
            detected: 1_700_000_100,
            expires: 1_700_010_000,
            digests: vec!["aa".repeat(32), "bb".repeat(32)],
            descriptors: vec!["00".into(), "01".into()],
            reports: Vec::new(),
        },
        EquivocationView {
            peer_id: "12D3KooWForker".into(),
            kind: EQUIVOCATED_REPORT.into(),
            seq: None,
            epoch: Some(472_222),
            detected: 1_700_000_200,
            expires: 1_700_020_000,
            digests: vec!["cc".repeat(32), "dd".repeat(32)],
            descriptors: Vec::new(),
            reports: vec!["4d01".into(), "4d02".into()],
        },
    ]
}

pub(crate) fn guards() -> Vec<GuardView> {
    vec![
        GuardView {
            peer_id: PEER_B.into(),
            primary: true,
            confirmed: true,
            listed: true,
            reachable: true,
            unreachable_since: None,
            circuits_attempted: 40,
            circuits_built: 39,
            flagged: false,
        },
        GuardView {
            peer_id: PEER_C.into(),
            primary: false,
            confirmed: false,
            listed: true,
            reachable: false,
            unreachable_since: Some(1_800_000_000),
            circuits_attempted: 20,
            circuits_built: 0,
            flagged: true,
        },
    ]
}

impl ControlSource for FakeSource {
    fn status(&self) -> StatusView {
        status()
    }
    fn nodes(&self) -> Vec<NodeView> {
        nodes()
    }
    fn circuits(&self) -> Vec<CircuitView> {
        circuits()
    }
    fn equivocations(&self) -> Vec<EquivocationView> {
        equivocations()
    }
    fn guards(&self) -> Vec<GuardView> {
        guards()
    }
}
