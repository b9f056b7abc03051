//! How a node acts as an exit: the `[exit]` section of `config.toml`, and
//! what the engine enforces.

use serde::{Deserialize, Serialize};

use crate::ExitPolicy;

/// How a node acts as an exit. One type from the configuration file to the
/// engine: `veilnet-config` reads it as the `[exit]` section and the
/// engine's admission policy enforces it (the node's own addresses, refused
/// for every role, are the policy's, not the exit's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExitConfig {
    /// Whether this node is an exit.
    pub enabled: bool,
    /// Danger: also connect to private, loopback, link-local and other
    /// non-public addresses (test networks only). Also accepted as
    /// `allow_private_targets`.
    #[serde(alias = "allow_private_targets")]
    pub danger_allow_private_targets: bool,
    /// Danger: open streams on one-hop circuits (circuits whose CREATE came
    /// straight from a client rather than from a relay of the directory).
    /// Such an exit is a single-hop proxy whose users have no anonymity from
    /// it, and it attracts abuse; only for test networks that build one-hop
    /// circuits. Also accepted as `allow_one_hop_exits`.
    #[serde(alias = "allow_one_hop_exits")]
    pub danger_allow_one_hop_exits: bool,
    /// The configured exit policy. In `config.toml` a list of rule strings;
    /// the empty list (the default) is [`ExitPolicy::default_exit`]. What is
    /// enforced is [`ExitConfig::enforced_policy`].
    #[serde(with = "default_if_empty")]
    pub policy: ExitPolicy,
}

impl Default for ExitConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            danger_allow_private_targets: false,
            danger_allow_one_hop_exits: false,
            policy: ExitPolicy::default_exit(),
        }
    }
}

impl ExitConfig {
    /// An enabled exit under `policy`, with every danger option off and no
    /// own addresses known.
    pub fn new(policy: ExitPolicy) -> Self {
        Self {
            enabled: true,
            policy,
            ..Self::default()
        }
    }

    /// The policy this node enforces and publishes:
    /// [`ExitPolicy::reject_all`] unless [`enabled`](Self::enabled);
    /// otherwise [`policy`](Self::policy), without its built-in private
    /// rejections if [`danger_allow_private_targets`](Self::danger_allow_private_targets).
    pub fn enforced_policy(&self) -> ExitPolicy {
        if !self.enabled {
            ExitPolicy::reject_all()
        } else if self.danger_allow_private_targets {
            self.policy.clone().with_private_targets_allowed()
        } else {
            self.policy.clone()
        }
    }
}

/// Serde for the `policy` field: rule strings, `[]` for the default policy.
mod default_if_empty {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::ExitPolicy;

    pub(super) fn serialize<S: Serializer>(p: &ExitPolicy, s: S) -> Result<S::Ok, S::Error> {
        if *p == ExitPolicy::default_exit() {
            s.collect_seq(std::iter::empty::<String>())
        } else {
            p.serialize(s)
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ExitPolicy, D::Error> {
        let p = ExitPolicy::deserialize(d)?;
        Ok(if p.rules().is_empty() {
            ExitPolicy::default_exit()
        } else {
            p
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enforced_policy() {
        let lan: std::net::IpAddr = "192.168.1.1".parse().unwrap();
        let off = ExitConfig::default();
        assert_eq!(off.enforced_policy(), ExitPolicy::reject_all());
        let mut on = ExitConfig::new(ExitPolicy::default_exit());
        assert!(!on.enforced_policy().allows(lan, 80));
        on.danger_allow_private_targets = true;
        assert!(on.enforced_policy().allows(lan, 80));
        assert!(!on.enforced_policy().allows(lan, 25), "SMTP stays refused");
    }
}
