//! A SOCKS5 client (RFC 1928, username/password of RFC 1929) for tests and
//! the benchmark: it reports the proxy's reply code instead of judging it.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use veilnet_cell::TargetAddr;

/// The reply code of a successful CONNECT.
pub const SUCCEEDED: u8 = 0x00;

/// Username and password for RFC 1929 authentication.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    /// Username (1..=255 bytes).
    pub user: &'a str,
    /// Password (1..=255 bytes).
    pub pass: &'a str,
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

fn len_u8(what: &str, s: &[u8]) -> io::Result<u8> {
    u8::try_from(s.len())
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{what} length")))
}

/// Greets the SOCKS5 proxy at `proxy` (no authentication, or `credentials`)
/// and sends CONNECT to `target`. Returns the reply code and the stream,
/// positioned after the reply: ready to carry data if the code is
/// [`SUCCEEDED`].
pub async fn connect(
    proxy: SocketAddr,
    target: &TargetAddr,
    credentials: Option<Credentials<'_>>,
) -> io::Result<(u8, TcpStream)> {
    let mut s = TcpStream::connect(proxy).await?;
    s.set_nodelay(true)?;
    let method = if credentials.is_some() { 2 } else { 0 };
    s.write_all(&[5, 1, method]).await?;
    let mut choice = [0u8; 2];
    s.read_exact(&mut choice).await?;
    if choice != [5, method] {
        return Err(bad(format!(
            "method choice {choice:?}, expected [5, {method}]"
        )));
    }
    if let Some(c) = credentials {
        let mut auth = vec![1, len_u8("username", c.user.as_bytes())?];
        auth.extend_from_slice(c.user.as_bytes());
        auth.push(len_u8("password", c.pass.as_bytes())?);
        auth.extend_from_slice(c.pass.as_bytes());
        s.write_all(&auth).await?;
        let mut status = [0u8; 2];
        s.read_exact(&mut status).await?;
        if status != [1, 0] {
            return Err(bad(format!("authentication refused: {status:?}")));
        }
    }
    let mut req = vec![5, 1, 0];
    match target {
        TargetAddr::Ip(SocketAddr::V4(a)) => {
            req.push(1);
            req.extend_from_slice(&a.ip().octets());
        }
        TargetAddr::Ip(SocketAddr::V6(a)) => {
            req.push(4);
            req.extend_from_slice(&a.ip().octets());
        }
        TargetAddr::Domain(name, _) => {
            req.extend_from_slice(&[3, len_u8("hostname", name.as_bytes())?]);
            req.extend_from_slice(name.as_bytes());
        }
    }
    req.extend_from_slice(&target.port().to_be_bytes());
    s.write_all(&req).await?;
    // VER REP RSV ATYP, then the bound address and port.
    let mut head = [0u8; 4];
    s.read_exact(&mut head).await?;
    if head[0] != 5 || head[2] != 0 {
        return Err(bad(format!("malformed SOCKS reply {head:?}")));
    }
    let addr_len = match head[3] {
        1 => 4,
        4 => 16,
        3 => usize::from(s.read_u8().await?),
        other => return Err(bad(format!("reply address type {other}"))),
    };
    let mut bound = vec![0u8; addr_len + 2];
    s.read_exact(&mut bound).await?;
    Ok((head[1], s))
}

/// [`connect`], and an error unless the proxy answered [`SUCCEEDED`].
pub async fn open(
    proxy: SocketAddr,
    target: &TargetAddr,
    credentials: Option<Credentials<'_>>,
) -> io::Result<TcpStream> {
    match connect(proxy, target, credentials).await? {
        (SUCCEEDED, s) => Ok(s),
        (code, _) => Err(io::Error::other(format!("SOCKS reply code {code:#04x}"))),
    }
}
