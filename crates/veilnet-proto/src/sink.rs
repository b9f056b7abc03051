//! Measurement sinks: stream targets that end inside this node.
//!
//! A relay measuring another builds a circuit that ends at itself and opens
//! a stream to a name only it knows (`<32 hex digits>.sink.veilnet`,
//! [`Sinks::register`]). When that BEGIN reaches this node's own last hop,
//! the stream is joined to the local socket registered for the name
//! instead of being resolved, and the name is forgotten, so it serves one
//! stream. The name is inside the last layer: the relays on the way see
//! only cells. Nobody else can use a sink: a BEGIN to any other name under
//! `.veilnet` is refused as the exit policy refuses, without a lookup
//! (`.veilnet` names are never sent to DNS).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use veilnet_cell::TargetAddr;

/// The suffix of every sink name.
pub const SINK_SUFFIX: &str = ".sink.veilnet";
/// Most sinks registered at once.
pub const MAX_SINKS: usize = 16;

/// The sinks this node has registered.
#[derive(Debug, Default)]
pub struct Sinks {
    by_name: Mutex<HashMap<String, SocketAddr>>,
}

/// A registered sink: its stream target, and its registration, which ends
/// when this is dropped.
#[derive(Debug)]
pub struct Sink {
    sinks: Arc<Sinks>,
    name: String,
    target: TargetAddr,
}

impl Sink {
    /// What the measuring stream opens.
    pub fn target(&self) -> &TargetAddr {
        &self.target
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        lock(&self.sinks.by_name).remove(&self.name);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Sinks {
    /// Registers a fresh random name for one stream to `local` (a socket
    /// on this host that the caller listens on); `None` if
    /// [`MAX_SINKS`] are registered.
    pub fn register(self: &Arc<Self>, local: SocketAddr) -> Option<Sink> {
        let mut map = lock(&self.by_name);
        if map.len() >= MAX_SINKS {
            return None;
        }
        let name = format!("{:032x}{SINK_SUFFIX}", rand::random::<u128>());
        map.insert(name.clone(), local);
        Some(Sink {
            sinks: self.clone(),
            target: TargetAddr::Domain(name.clone(), 1),
            name,
        })
    }

    /// The local socket for `target` if it is a registered sink name; the
    /// name is used up.
    pub(crate) fn claim(&self, target: &TargetAddr) -> Option<SocketAddr> {
        let TargetAddr::Domain(name, _) = target else {
            return None;
        };
        if !name.ends_with(SINK_SUFFIX) {
            return None;
        }
        lock(&self.by_name).remove(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sink_serves_one_stream_and_only_its_own_name() {
        let sinks = Arc::new(Sinks::default());
        let addr: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let sink = sinks.register(addr).unwrap();
        let guess = TargetAddr::Domain(format!("{}{SINK_SUFFIX}", "0".repeat(32)), 1);
        assert_eq!(sinks.claim(&guess), None);
        assert_eq!(sinks.claim(sink.target()), Some(addr));
        assert_eq!(sinks.claim(sink.target()), None, "used up");
        let again = sinks.register(addr).unwrap();
        drop(again);
        assert!(lock(&sinks.by_name).is_empty(), "dropped: unregistered");
        let held: Vec<Sink> = (0..MAX_SINKS)
            .filter_map(|_| sinks.register(addr))
            .collect();
        assert_eq!(held.len(), MAX_SINKS);
        assert!(sinks.register(addr).is_none());
    }
}
