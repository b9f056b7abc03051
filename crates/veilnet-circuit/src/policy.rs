//! Admission policy: which circuits, extensions and streams a node serves.
//!
//! The engine is mechanism: it enforces the protocol's own rules (CREATE only
//! on links the peer opened, the extend budget, windows) and then asks a
//! [`RelayPolicy`] before it answers a CREATE, before it extends a circuit,
//! when an exit receives a BEGIN and before it connects to each address.
//! Decisions that need knowledge the engine does not have (the directory,
//! the exit policy, the node's own addresses) live behind that trait.
//! [`DefaultRelayPolicy`] is the policy every node runs; the node crate gives
//! it the directory.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use libp2p_identity::PeerId;
use thiserror::Error;
use veilnet_cell::{EndReason, TargetAddr};
pub use veilnet_policy::ExitConfig;
use veilnet_policy::{canonical_ip, is_private_or_special};

/// A CREATE the engine is about to answer.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    /// The authenticated neighbour that sent it: a relay's identity or a
    /// client's throwaway one. It opened the link (the engine refuses CREATE
    /// on links we opened before asking the policy).
    pub prev_peer: PeerId,
}

/// An EXTEND the engine is about to carry out (we are the circuit's last hop).
#[derive(Debug, Clone)]
pub struct ExtendRequest {
    /// The neighbour that sent the circuit's CREATE to us.
    pub prev_peer: PeerId,
    /// The relay the client asks us to extend to.
    pub next_peer: PeerId,
    /// Its link address, from the client's directory.
    pub next_addr: SocketAddr,
}

/// A BEGIN that arrived at this node (we are the circuit's last hop), before
/// anything is resolved or allocated.
#[derive(Debug, Clone)]
pub struct BeginRequest<'a> {
    /// The neighbour that sent the circuit's CREATE to us. If it is not a
    /// relay, it is the client itself: the circuit has one hop.
    pub prev_peer: PeerId,
    /// What the client asked for.
    pub target: &'a TargetAddr,
}

/// One address an exit is about to connect to for an admitted BEGIN: the
/// target's own address, or each address its name resolved to.
#[derive(Debug, Clone)]
pub struct ConnectRequest<'a> {
    /// The neighbour that sent the circuit's CREATE to us.
    pub prev_peer: PeerId,
    /// What the client asked for.
    pub target: &'a TargetAddr,
    /// The address about to be connected.
    pub addr: SocketAddr,
}

/// Why a policy refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Refusal {
    /// This node is not an exit.
    #[error("this node is not an exit")]
    NotExit,
    /// The circuit came straight from a client (its CREATE's sender is not a
    /// known relay): we would be a one-hop exit.
    #[error("one-hop circuit")]
    OneHop,
    /// A private, loopback, link-local or otherwise special address.
    #[error("private or special-purpose address")]
    PrivateAddress,
    /// One of this node's own public addresses.
    #[error("one of this node's own addresses")]
    OwnAddress,
    /// The exit policy does not accept the target.
    #[error("refused by the exit policy")]
    ExitPolicy,
    /// An EXTEND to a peer that is not a relay in our directory: we only
    /// open links to relays, so nobody can make us connect anywhere else.
    #[error("not a relay we know")]
    UnknownRelay,
    /// An EXTEND back to the hop the circuit came from.
    #[error("extend back to the previous hop")]
    BackToPrevious,
    /// Some other rule of a custom policy.
    #[error("refused by policy: {0}")]
    Other(&'static str),
}

impl Refusal {
    /// The END reason a refused BEGIN gets: always
    /// [`EndReason::ExitPolicy`] ("this exit will not take you there", SOCKS
    /// "not allowed by ruleset"), so the client learns nothing finer, for
    /// instance not whether an address is one of ours.
    pub fn end_reason(self) -> EndReason {
        EndReason::ExitPolicy
    }
}

/// Decides which circuits, extensions and streams a node serves.
///
/// Called synchronously on the engine's hot paths (once per CREATE, EXTEND,
/// BEGIN and connect attempt, never per cell): answer quickly, without I/O.
/// What the engine does with a refusal: CREATE gets DESTROY(ResourceLimit),
/// EXTEND destroys the circuit with DESTROY(ExtendFailed), BEGIN and connect
/// get END([`Refusal::end_reason`]).
pub trait RelayPolicy: Send + Sync {
    /// Before answering a CREATE on a link the peer opened.
    fn admit_create(&self, req: &CreateRequest) -> Result<(), Refusal>;
    /// Before extending a circuit to the next hop.
    fn admit_extend(&self, req: &ExtendRequest) -> Result<(), Refusal>;
    /// When a BEGIN arrives, before resolving or allocating anything.
    fn admit_begin(&self, req: &BeginRequest<'_>) -> Result<(), Refusal>;
    /// Before connecting to each address for an admitted BEGIN.
    fn admit_connect(&self, req: &ConnectRequest<'_>) -> Result<(), Refusal>;
}

/// What the one-hop rule and the EXTEND rule need from the node's
/// directory.
pub trait KnownRelays: Send + Sync {
    /// Whether `peer` is a relay listed in this node's directory; with
    /// `link_addr`, also whether its descriptor lists that link address.
    fn is_relay(&self, peer: &PeerId, link_addr: Option<&SocketAddr>) -> bool;
}

impl<F: Fn(&PeerId, Option<&SocketAddr>) -> bool + Send + Sync> KnownRelays for F {
    fn is_relay(&self, peer: &PeerId, link_addr: Option<&SocketAddr>) -> bool {
        self(peer, link_addr)
    }
}

/// The policy every node runs.
///
/// * CREATE: always admitted (the engine has checked the link and our role).
/// * EXTEND: refused unless the peer is a relay in our directory and the
///   address one its descriptor lists; refused to private, loopback and
///   link-local addresses unless `allow_private_links`, and to our own
///   public addresses, so nobody can use us to probe our own host or
///   network, or any other.
/// * BEGIN: refused unless we are an exit; refused on one-hop circuits
///   unless `exit.danger_allow_one_hop_exits`; a name on a port the exit policy
///   refuses for every address is refused before it is resolved.
/// * connect: refused unless the exit policy accepts the address, refused to
///   private addresses unless `exit.allow_private_targets`, refused to our
///   own public addresses.
pub struct DefaultRelayPolicy {
    /// Danger: extend circuits to relays at private, loopback or link-local
    /// addresses (test networks only).
    pub allow_private_links: bool,
    /// Exit settings, if this node is an exit.
    pub exit: Option<ExitConfig>,
    /// Which peers are relays (the directory): the one-hop rule asks it.
    pub relays: Arc<dyn KnownRelays>,
    /// This node's own addresses, whatever its role: it never extends or
    /// connects to the public ones (the private ones are the private
    /// rule's). The node fills them in from its configuration and its
    /// interfaces.
    pub own_addrs: Vec<IpAddr>,
}

impl std::fmt::Debug for DefaultRelayPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DefaultRelayPolicy")
            .field("allow_private_links", &self.allow_private_links)
            .field("exit", &self.exit)
            .finish_non_exhaustive()
    }
}

impl DefaultRelayPolicy {
    /// Our exit settings, if we are an exit.
    fn exit(&self) -> Result<&ExitConfig, Refusal> {
        self.exit
            .as_ref()
            .filter(|e| e.enabled)
            .ok_or(Refusal::NotExit)
    }

    /// A relay that is not an exit and extends to public addresses only.
    pub fn new(relays: Arc<dyn KnownRelays>) -> Self {
        Self {
            allow_private_links: false,
            exit: None,
            relays,
            own_addrs: Vec::new(),
        }
    }

    /// Whether `ip` is one of our own public addresses (Tor's
    /// ExitPolicyRejectMyAddresses, for every role). Private and loopback
    /// ones are the private rule's business.
    fn is_own(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        !is_private_or_special(ip) && self.own_addrs.iter().any(|a| canonical_ip(*a) == ip)
    }
}

impl RelayPolicy for DefaultRelayPolicy {
    fn admit_create(&self, _req: &CreateRequest) -> Result<(), Refusal> {
        Ok(())
    }

    fn admit_extend(&self, req: &ExtendRequest) -> Result<(), Refusal> {
        let ip = canonical_ip(req.next_addr.ip());
        if !self.allow_private_links && is_private_or_special(ip) {
            return Err(Refusal::PrivateAddress);
        }
        if self.is_own(ip) {
            return Err(Refusal::OwnAddress);
        }
        // Only to a relay we know, at an address its descriptor lists: a
        // known relay's id with any other address must not make us connect
        // there (a port scan or connect flood through us).
        if !self.relays.is_relay(&req.next_peer, Some(&req.next_addr)) {
            return Err(Refusal::UnknownRelay);
        }
        Ok(())
    }

    fn admit_begin(&self, req: &BeginRequest<'_>) -> Result<(), Refusal> {
        let exit = self.exit()?;
        if !exit.danger_allow_one_hop_exits && !self.relays.is_relay(&req.prev_peer, None) {
            return Err(Refusal::OneHop);
        }
        if let TargetAddr::Domain(_, port) = req.target {
            if !exit.enforced_policy().may_allow_port(*port) {
                return Err(Refusal::ExitPolicy);
            }
        }
        Ok(())
    }

    fn admit_connect(&self, req: &ConnectRequest<'_>) -> Result<(), Refusal> {
        let exit = self.exit()?;
        let ip = canonical_ip(req.addr.ip());
        if !exit.danger_allow_private_targets && is_private_or_special(ip) {
            return Err(Refusal::PrivateAddress);
        }
        if self.is_own(ip) {
            return Err(Refusal::OwnAddress);
        }
        if !exit.enforced_policy().allows(ip, req.addr.port()) {
            return Err(Refusal::ExitPolicy);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use veilnet_policy::ExitPolicy;

    fn peer() -> PeerId {
        libp2p_identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// An exit whose only known relay is `relay`.
    fn exit_policy(relay: PeerId, exit: ExitConfig) -> DefaultRelayPolicy {
        DefaultRelayPolicy {
            allow_private_links: false,
            exit: Some(exit),
            relays: Arc::new(move |p: &PeerId, _: Option<&SocketAddr>| *p == relay),
            own_addrs: Vec::new(),
        }
    }

    fn connect(
        p: &DefaultRelayPolicy,
        prev_peer: PeerId,
        target: &TargetAddr,
        to: &str,
    ) -> Result<(), Refusal> {
        p.admit_connect(&ConnectRequest {
            prev_peer,
            target,
            addr: addr(to),
        })
    }

    #[test]
    fn exits_refuse_their_own_public_addresses() {
        let relay = peer();
        let cfg = ExitConfig::new(ExitPolicy::default_exit());
        // Documentation addresses (RFC 5737 / RFC 3849): public, never routed.
        let own: Vec<IpAddr> = ["198.51.100.7", "2001:db8::7", "127.0.0.1"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let mut p = exit_policy(relay, cfg.clone());
        p.own_addrs = own.clone();
        let name = TargetAddr::Domain("example.com".into(), 443);
        let ip = TargetAddr::Ip(addr("198.51.100.7:443"));
        // Every port of our own address, by IP or through a name, and its
        // IPv4-mapped IPv6 form.
        for to in [
            "198.51.100.7:443",
            "198.51.100.7:80",
            "198.51.100.7:9201",
            "[::ffff:198.51.100.7]:443",
            "[2001:db8::7]:443",
        ] {
            assert_eq!(
                connect(&p, relay, &ip, to),
                Err(Refusal::OwnAddress),
                "{to}"
            );
            assert_eq!(
                connect(&p, relay, &name, to),
                Err(Refusal::OwnAddress),
                "{to}"
            );
        }
        // Neighbouring public addresses are fine.
        for to in ["198.51.100.8:443", "[2001:db8::8]:443", "203.0.113.9:80"] {
            assert_eq!(connect(&p, relay, &name, to), Ok(()), "{to}");
        }
        // Own loopback addresses are the private rule's business: refused by
        // default, allowed on test networks that allow private targets.
        assert_eq!(
            connect(&p, relay, &name, "127.0.0.1:80"),
            Err(Refusal::PrivateAddress)
        );
        let mut test_net = cfg;
        test_net.danger_allow_private_targets = true;
        test_net.policy = test_net.policy.with_private_targets_allowed();
        let mut p = exit_policy(relay, test_net);
        p.own_addrs = own;
        assert_eq!(connect(&p, relay, &name, "127.0.0.1:80"), Ok(()));
        // ... but a public own address stays refused there too.
        assert_eq!(
            connect(&p, relay, &name, "198.51.100.7:80"),
            Err(Refusal::OwnAddress)
        );
        // And the refusal reaches the client as a plain exit-policy END.
        assert_eq!(Refusal::OwnAddress.end_reason(), EndReason::ExitPolicy);
    }

    #[test]
    fn one_hop_circuits_are_refused_unless_allowed() {
        let relay = peer();
        let client = peer();
        let target = TargetAddr::Domain("example.com".into(), 443);
        let begin = |p: &DefaultRelayPolicy, prev_peer| {
            p.admit_begin(&BeginRequest {
                prev_peer,
                target: &target,
            })
        };
        let cfg = ExitConfig::new(ExitPolicy::default_exit());
        let p = exit_policy(relay, cfg.clone());
        assert_eq!(begin(&p, relay), Ok(()));
        assert_eq!(begin(&p, client), Err(Refusal::OneHop));
        let mut one_hop = cfg;
        one_hop.danger_allow_one_hop_exits = true;
        let p = exit_policy(relay, one_hop);
        assert_eq!(begin(&p, client), Ok(()));
        // A non-exit refuses every stream.
        let p = DefaultRelayPolicy::new(Arc::new(move |p: &PeerId, _: Option<&SocketAddr>| {
            *p == relay
        }));
        assert_eq!(begin(&p, relay), Err(Refusal::NotExit));
    }

    #[test]
    fn exit_policy_and_private_targets() {
        let relay = peer();
        let p = exit_policy(relay, ExitConfig::new(ExitPolicy::default_exit()));
        let smtp = TargetAddr::Domain("mail.example.com".into(), 25);
        // Port 25 is refused before the name is resolved ...
        assert_eq!(
            p.admit_begin(&BeginRequest {
                prev_peer: relay,
                target: &smtp,
            }),
            Err(Refusal::ExitPolicy)
        );
        // ... and as an address.
        assert_eq!(
            connect(&p, relay, &smtp, "203.0.113.9:25"),
            Err(Refusal::ExitPolicy)
        );
        for private in ["10.0.0.1:80", "127.0.0.1:80", "[::1]:80", "[fe80::1]:80"] {
            assert_eq!(
                connect(&p, relay, &smtp, private),
                Err(Refusal::PrivateAddress),
                "{private}"
            );
        }
        // A permissive custom policy does not open the LAN by accident.
        let mut lan = ExitConfig::new(ExitPolicy::parse_rules(&["accept *:*"]).unwrap());
        let p = exit_policy(relay, lan.clone());
        assert_eq!(
            connect(&p, relay, &smtp, "192.168.1.1:80"),
            Err(Refusal::PrivateAddress)
        );
        lan.danger_allow_private_targets = true;
        let p = exit_policy(relay, lan);
        assert_eq!(connect(&p, relay, &smtp, "192.168.1.1:80"), Ok(()));
    }

    #[test]
    fn extends_to_private_addresses_are_refused_unless_allowed() {
        let mut p = DefaultRelayPolicy::new(Arc::new(|_: &PeerId, _: Option<&SocketAddr>| true));
        let req = |to: &str| ExtendRequest {
            prev_peer: peer(),
            next_peer: peer(),
            next_addr: addr(to),
        };
        assert_eq!(
            p.admit_extend(&req("127.0.0.1:9201")),
            Err(Refusal::PrivateAddress)
        );
        assert_eq!(
            p.admit_extend(&req("[::ffff:10.1.2.3]:9201")),
            Err(Refusal::PrivateAddress)
        );
        assert_eq!(p.admit_extend(&req("203.0.113.9:9201")), Ok(()));
        p.allow_private_links = true;
        assert_eq!(p.admit_extend(&req("127.0.0.1:9201")), Ok(()));
        // Only to relays we know, at an address their descriptor lists.
        let listed: SocketAddr = addr("203.0.113.9:9201");
        let known_at =
            DefaultRelayPolicy::new(Arc::new(move |_: &PeerId, at: Option<&SocketAddr>| {
                at.is_none_or(|a| *a == listed)
            }));
        assert_eq!(known_at.admit_extend(&req("203.0.113.9:9201")), Ok(()));
        assert_eq!(
            known_at.admit_extend(&req("203.0.113.9:22")),
            Err(Refusal::UnknownRelay)
        );
        assert_eq!(
            known_at.admit_extend(&req("198.51.100.1:9201")),
            Err(Refusal::UnknownRelay)
        );
        let stranger =
            DefaultRelayPolicy::new(Arc::new(|_: &PeerId, _: Option<&SocketAddr>| false));
        assert_eq!(
            stranger.admit_extend(&req("203.0.113.9:9201")),
            Err(Refusal::UnknownRelay)
        );
        // Never to our own public address.
        p.exit = Some(ExitConfig::new(ExitPolicy::default_exit()));
        p.own_addrs = vec!["203.0.113.9".parse().unwrap()];
        assert_eq!(
            p.admit_extend(&req("203.0.113.9:22")),
            Err(Refusal::OwnAddress)
        );
        assert_eq!(p.admit_extend(&req("203.0.113.10:22")), Ok(()));
        assert_eq!(p.admit_create(&CreateRequest { prev_peer: peer() }), Ok(()));
    }

    #[test]
    fn relays_that_are_not_exits_refuse_their_own_addresses_too() {
        // A Sybil descriptor may list our own public address (any port):
        // EXTEND must not make a middle relay connect to its own host.
        let mut p = DefaultRelayPolicy::new(Arc::new(|_: &PeerId, _: Option<&SocketAddr>| true));
        p.own_addrs = vec![
            "203.0.113.9".parse().unwrap(),
            "2001:db8::9".parse().unwrap(),
        ];
        assert!(p.exit.is_none());
        let req = |to: &str| ExtendRequest {
            prev_peer: peer(),
            next_peer: peer(),
            next_addr: addr(to),
        };
        for to in [
            "203.0.113.9:22",
            "203.0.113.9:9201",
            "[::ffff:203.0.113.9]:22",
            "[64:ff9b::cb00:7109]:22",
            "[2002:cb00:7109::1]:22",
            "[2001:db8::9]:22",
        ] {
            assert_eq!(p.admit_extend(&req(to)), Err(Refusal::OwnAddress), "{to}");
        }
        assert_eq!(p.admit_extend(&req("203.0.113.10:9201")), Ok(()));
    }

    #[test]
    fn own_public_addresses() {
        let mut p = DefaultRelayPolicy::new(Arc::new(|_: &PeerId, _: Option<&SocketAddr>| true));
        p.own_addrs = vec![
            "198.51.100.7".parse().unwrap(),
            "127.0.0.1".parse().unwrap(),
        ];
        assert!(p.is_own("198.51.100.7".parse().unwrap()));
        assert!(p.is_own("::ffff:198.51.100.7".parse().unwrap()));
        assert!(!p.is_own("127.0.0.1".parse().unwrap()));
        assert!(!p.is_own("198.51.100.8".parse().unwrap()));
    }
}
