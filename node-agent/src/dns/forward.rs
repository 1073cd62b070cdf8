//! Relaying names outside the cluster domain to the host's resolvers, byte for byte
//! (the upstream's answer, id included, goes back as it came), over the transport
//! the client used. Upstreams are tried in order until one answers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("{upstream}: {source}")]
    Io {
        upstream: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}: no answer in time")]
    Timeout(SocketAddr),
    #[error("no upstream resolver")]
    NoUpstream,
}

/// Sends `query` to each upstream in turn; the first answer wins.
pub async fn relay(
    query: &[u8],
    upstreams: &[SocketAddr],
    tcp: bool,
    timeout: Duration,
) -> Result<Vec<u8>, ForwardError> {
    let mut last = ForwardError::NoUpstream;
    for &upstream in upstreams {
        let attempt = async {
            if tcp {
                over_tcp(query, upstream).await
            } else {
                over_udp(query, upstream).await
            }
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(source)) => last = ForwardError::Io { upstream, source },
            Err(_) => last = ForwardError::Timeout(upstream),
        }
    }
    Err(last)
}

async fn over_udp(query: &[u8], upstream: SocketAddr) -> std::io::Result<Vec<u8>> {
    let any: IpAddr = if upstream.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let sock = UdpSocket::bind((any, 0)).await?;
    sock.connect(upstream).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = sock.recv(&mut buf).await?;
        // Only the reply to this query (same id) counts; strays are skipped.
        if n >= 2 && query.len() >= 2 && buf[..2] == query[..2] {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn over_tcp(query: &[u8], upstream: SocketAddr) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(upstream).await?;
    let len = u16::try_from(query.len()).map_err(std::io::Error::other)?;
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(query);
    s.write_all(&out).await?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}
