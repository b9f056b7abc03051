//! The exit's side of a stream: resolve, check the exit policy, connect.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::timeout;
use veilnet_cell::{EndReason, TargetAddr};
use veilnet_policy::is_private_or_special;

use crate::core::ExitConfig;

/// Most addresses tried for one name.
const MAX_ADDRS: usize = 8;

fn allowed(cfg: &ExitConfig, addr: &SocketAddr) -> bool {
    cfg.policy.allows(addr.ip(), addr.port())
        && (cfg.allow_private_targets || !is_private_or_special(addr.ip()))
}

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
/// addresses the policy allows, and connects to the first that answers.
pub(crate) async fn connect(
    cfg: &ExitConfig,
    target: &TargetAddr,
    connect_timeout: Duration,
) -> Result<TcpStream, EndReason> {
    let addrs: Vec<SocketAddr> = match target {
        TargetAddr::Ip(a) => vec![*a],
        TargetAddr::Domain(host, port) => {
            if !cfg.policy.may_allow_port(*port) {
                return Err(EndReason::ExitPolicy);
            }
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
    let permitted: Vec<_> = addrs.iter().filter(|a| allowed(cfg, a)).collect();
    if permitted.is_empty() {
        return Err(EndReason::ExitPolicy);
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
