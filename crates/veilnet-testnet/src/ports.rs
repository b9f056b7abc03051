//! Loopback ports for test networks of separate processes, whose ports must
//! be chosen before the processes start.
//!
//! Binding port 0 and releasing it hands out a port from the kernel's
//! ephemeral range, where the kernel may give it to any outgoing connection
//! (a node dialing another) before the node meant to listen on it binds
//! it, and where two picks may return the same port. So ports are picked
//! below the ephemeral range, checked free, and never handed out twice by
//! one process.

use std::collections::BTreeSet;
use std::io;
use std::net::TcpListener;
use std::sync::Mutex;

use rand::Rng;

/// Ports this process has handed out.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// The lowest port of the kernel's ephemeral range (Linux; 32768 elsewhere,
/// the Linux default).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A loopback TCP port that is free now, outside the ephemeral range, and
/// not handed out before by this process.
pub fn pick_port() -> io::Result<u16> {
    let high = ephemeral_low().max(12_000);
    let mut rng = rand::thread_rng();
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..2000 {
        let port = rng.gen_range(10_000..high);
        if handed.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed.insert(port);
            return Ok(port);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrNotAvailable,
        "no free loopback port below the ephemeral range",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picked_ports_are_distinct_free_and_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..200).map(|_| pick_port().unwrap()).collect();
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
        assert!(ports
            .iter()
            .all(|&p| p >= 10_000 && p < ephemeral_low().max(12_000)));
        assert!(TcpListener::bind(("127.0.0.1", ports[0])).is_ok());
    }
}
