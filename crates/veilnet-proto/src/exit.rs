//! The exit's side of a stream: resolve, ask the policy about each address,
//! connect.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use libp2p_identity::PeerId;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tracing::debug;
use veilnet_cell::{EndReason, TargetAddr};

use veilnet_circuit::policy::{ConnectRequest, RelayPolicy};

/// Most addresses tried for one name.
const MAX_ADDRS: usize = 8;

fn end_reason(e: &std::io::Error) -> EndReason {
    match e.kind() {
        ErrorKind::ConnectionRefused => EndReason::ConnectRefused,
        ErrorKind::TimedOut => EndReason::Timeout,
        ErrorKind::NetworkUnreachable => EndReason::NetUnreachable,
        ErrorKind::HostUnreachable => EndReason::HostUnreachable,
        ErrorKind::ConnectionReset => EndReason::Reset,
        _ => EndReason::Misc,
    }
}

/// Resolves `target` (the exit resolves names, never the client), keeps the
/// addresses the policy admits, and connects to the first that answers. The
/// policy has already admitted the BEGIN itself (`RelayPolicy::admit_begin`).
pub(crate) async fn connect(
    policy: &dyn RelayPolicy,
    prev_peer: PeerId,
    target: &TargetAddr,
    connect_timeout: Duration,
) -> Result<TcpStream, EndReason> {
    let addrs: Vec<SocketAddr> = match target {
        TargetAddr::Ip(a) => vec![*a],
        TargetAddr::Domain(host, port) => {
            match timeout(
                connect_timeout,
                tokio::net::lookup_host((host.as_str(), *port)),
            )
            .await
            {
                Ok(Ok(it)) => it.take(MAX_ADDRS).collect(),
                Ok(Err(_)) | Err(_) => return Err(EndReason::ResolveFailed),
            }
        }
    };
    if addrs.is_empty() {
        return Err(EndReason::ResolveFailed);
    }
    let mut refused = None;
    let permitted: Vec<_> = addrs
        .iter()
        .filter(|&&addr| {
            let req = ConnectRequest {
                prev_peer,
                target,
                addr,
            };
            match policy.admit_connect(&req) {
                Ok(()) => true,
                Err(r) => {
                    refused = Some(r);
                    false
                }
            }
        })
        .collect();
    if permitted.is_empty() {
        let reason = refused.map_or(EndReason::ExitPolicy, |r| r.end_reason());
        debug!("no address of a stream target admitted: {refused:?}");
        return Err(reason);
    }
    let mut last = EndReason::Misc;
    for addr in permitted {
        match timeout(connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last = end_reason(&e),
            Err(_) => last = EndReason::Timeout,
        }
    }
    Err(last)
}
