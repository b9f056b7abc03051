//! The **cut**: which records the relay set and the weights are computed
//! from, so that every node chooses paths from the same view.
//!
//! Records reach nodes at different moments: a new descriptor takes
//! seconds to spread, and with hundreds of changes an hour in a large
//! network some change is almost always half-way through it. If every node
//! weighed whatever it holds, at most moments some nodes would hold a
//! relay the others do not, and a node's view would tell it apart
//! (Danezis and Clayton's route fingerprinting; Tor's answer is one
//! consensus for everyone). Without authorities, veilnet takes the view
//! at a time every node agrees on: time runs in slots of `every_secs`
//! seconds (aligned to unix time), and through a slot a node weighs the
//! records published at least `margin_secs` before the slot began. A
//! record published later is stored and gossiped at once and counts from
//! the next slot; by then it has reached every node that gossips.
//!
//! A relay already listed republishes with its `published` time set to
//! the current cut ([`Cut::at`]), so a routine republication never leaves
//! the view; only a relay new to the network (or back after its last
//! descriptor expired) waits for the next slot.
//!
//! What the cut does not do: a relay can time its own descriptor to arrive
//! around a slot's start, or back-date it, and be in some views and not
//! others for the seconds its record takes to spread. That concerns only
//! itself; a consensus signed by authorities would prevent it.

/// A slot length and margin (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cut {
    /// Length of a slot, seconds (at least 1).
    pub every_secs: u64,
    /// How long before a slot's start a record must have been published
    /// to count in it, seconds (less than `every_secs`).
    pub margin_secs: u64,
}

impl Cut {
    /// The public network's: hourly slots, records published 5 minutes
    /// before the hour (gossip spreads one in seconds; a client fetches in
    /// the minutes between).
    pub const PUBLIC: Cut = Cut {
        every_secs: 60 * 60,
        margin_secs: 5 * 60,
    };

    /// Every record held counts at once (a test network on one host).
    pub const IMMEDIATE: Cut = Cut {
        every_secs: 1,
        margin_secs: 0,
    };

    fn every(&self) -> u64 {
        self.every_secs.max(1)
    }

    /// Start (unix seconds) of the slot `now` falls in.
    pub fn slot_start(&self, now: u64) -> u64 {
        now - now % self.every()
    }

    /// The cut at `now`: records published at or before it count.
    pub fn at(&self, now: u64) -> u64 {
        self.slot_start(now).saturating_sub(self.margin_secs)
    }

    /// Start of the slot after the one `now` falls in.
    pub fn next_slot(&self, now: u64) -> u64 {
        self.slot_start(now).saturating_add(self.every())
    }

    /// When in a slot a client fetches the directory (seconds after the
    /// slot's start, from and to): between a fifth of the margin after the
    /// next slot's cut (gossip has spread the last records by then) and a
    /// tenth of the margin before that slot begins, so that through it the
    /// client has what every relay uses. `None` when the margin is under
    /// 10 s (test networks: clients reconcile as often as relays).
    pub fn fetch_window(&self) -> Option<(u64, u64)> {
        if self.margin_secs < 10 || !self.is_valid() {
            return None;
        }
        let (every, margin) = (self.every_secs, self.margin_secs);
        Some((every - margin + margin / 5, every - margin / 10))
    }

    /// Whether the slot length and margin make sense: `every_secs` at
    /// least 1 and the margin shorter than a slot.
    pub fn is_valid(&self) -> bool {
        self.every_secs >= 1 && self.margin_secs < self.every_secs
    }
}

impl Default for Cut {
    fn default() -> Self {
        Cut::IMMEDIATE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cut_is_the_margin_before_the_slot_start() {
        let c = Cut {
            every_secs: 3600,
            margin_secs: 300,
        };
        assert_eq!(c.at(7200), 6900);
        assert_eq!(c.at(10_799), 6900);
        assert_eq!(c.at(10_800), 10_500);
        assert_eq!(c.next_slot(7200), 10_800);
        assert_eq!(c.at(100), 0);
        assert_eq!(Cut::IMMEDIATE.at(12_345), 12_345);
        assert!(c.is_valid() && Cut::IMMEDIATE.is_valid());
        assert_eq!(c.fetch_window(), Some((3360, 3570)));
        assert_eq!(Cut::IMMEDIATE.fetch_window(), None);
        assert!(!Cut {
            every_secs: 60,
            margin_secs: 60
        }
        .is_valid());
    }
}
