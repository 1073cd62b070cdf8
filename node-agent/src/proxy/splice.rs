//! TCP forwarding that is zero-copy for bulk data: once a direction carries a stream,
//! bytes move socket → pipe → socket with splice(2) and never enter user space (a
//! bulk stream through a read/write copy loop reached a quarter of a direct
//! connection's throughput). Both directions run in the connection's task on the
//! sockets' tokio readiness.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

/// Bytes moved per splice call (and the pipe size asked for).
const CHUNK: usize = 1 << 20;

/// A pipe whose two ends close on drop.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (read, write) = rustix::pipe::pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
        // A larger pipe means fewer calls per megabyte; the default (64 KiB) is kept
        // when the limit (fs.pipe-max-size) refuses.
        let _ = rustix::pipe::fcntl_setpipe_size(&write, CHUNK);
        Ok(Pipe { read, write })
    }
}

fn splice(from: impl AsFd, to: impl AsFd, len: usize) -> io::Result<usize> {
    Ok(rustix::pipe::splice(
        from,
        None,
        to,
        None,
        len,
        SpliceFlags::MOVE | SpliceFlags::NONBLOCK,
    )?)
}

/// Reads smaller than this are copied through user space; a read that fills it
/// switches the direction to splice for good (a bulk stream). For small exchanges
/// (requests and responses) two plain syscalls beat two splices through a pipe.
const COPY_BUF: usize = 16 * 1024;

/// Moves everything `from` sends to `to` until `from`'s end of stream, then shuts
/// `to` down for writing. Returns the bytes moved.
async fn one_way(
    from: &mut ReadHalf<'_>,
    to: &mut WriteHalf<'_>,
    local_congestion: Option<&str>,
) -> io::Result<u64> {
    let total = match copy_until_bulk(from, to).await? {
        Copied::Ended(n) => n,
        Copied::Bulk(n) => n + bulk_to_end(from.as_ref(), to.as_ref(), local_congestion).await?,
    };
    let _ = rustix::net::shutdown(to.as_ref(), rustix::net::Shutdown::Write);
    Ok(total)
}

enum Copied {
    /// `from` ended after this many bytes.
    Ended(u64),
    /// A read filled the buffer: a bulk stream, this many bytes in.
    Bulk(u64),
}

/// Copies through a stack buffer until `from` ends or a read fills the buffer.
/// Through tokio's `AsyncRead`/`AsyncWrite`, which take a short read as "drained"
/// (as a short write as "full") and wait for the next readiness edge instead of
/// asking again: one system call fewer per message than `try_read` until EAGAIN.
async fn copy_until_bulk(from: &mut ReadHalf<'_>, to: &mut WriteHalf<'_>) -> io::Result<Copied> {
    let mut total = 0u64;
    let mut buf = [0u8; COPY_BUF];
    loop {
        let n = from.read(&mut buf).await?;
        super::plane::note_activity();
        if n == 0 {
            return Ok(Copied::Ended(total));
        }
        to.write_all(&buf[..n]).await?;
        total += n as u64;
        if n == COPY_BUF {
            return Ok(Copied::Bulk(total));
        }
    }
}

/// Moves a direction that turned bulk to `from`'s end of stream (not shutting `to`
/// down): spliced, on `local_congestion` when `to`'s peer is on this node.
async fn bulk_to_end(
    from: &TcpStream,
    to: &TcpStream,
    local_congestion: Option<&str>,
) -> io::Result<u64> {
    if let Some(cc) = local_congestion {
        tune_local_hop(to, cc);
    }
    // The pipe is made only now: connections that only ever exchange small messages
    // cost no pipe calls. Without one (EMFILE), keep copying.
    match Pipe::new() {
        Ok(pipe) => splice_all(from, to, &pipe).await,
        Err(_) => copy_to_end(from, to).await,
    }
}

/// A plain copy loop to the end of `from` (when no pipe can be had).
async fn copy_to_end(from: &TcpStream, to: &TcpStream) -> io::Result<u64> {
    pump(
        from,
        to,
        &mut vec![0u8; COPY_BUF],
        |buf| Ok(rustix::io::read(from, &mut buf[..])?),
        |buf, done, n| Ok(rustix::io::write(to, &buf[done..n])?),
    )
    .await
}

/// Splices `from` → `to` until `from`'s end of stream: each read fills the empty
/// pipe with what `from` holds, and the pipe is drained into `to` before the next
/// one. (Two pipes, one filling while the other drained, moved 3–5% less in the
/// bulk benchmark: the select over both sockets costs more than the overlap gives.)
async fn splice_all(from: &TcpStream, to: &TcpStream, pipe: &Pipe) -> io::Result<u64> {
    pump(
        from,
        to,
        &mut (),
        |()| splice(from, &pipe.write, CHUNK),
        |(), done, n| splice(&pipe.read, to, n - done),
    )
    .await
}

/// Moves `from` → `to` until `from`'s end of stream, on the sockets' readiness:
/// `fill` takes up to a buffer's worth from `from` (0: end of stream) into `held`,
/// and `drain(held, done, n)` hands on what is left of it to `to`.
async fn pump<H: ?Sized>(
    from: &TcpStream,
    to: &TcpStream,
    held: &mut H,
    mut fill: impl FnMut(&mut H) -> io::Result<usize>,
    mut drain: impl FnMut(&mut H, usize, usize) -> io::Result<usize>,
) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        from.readable().await?;
        super::plane::note_activity();
        let n = match from.try_io(Interest::READABLE, || fill(held)) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        let mut done = 0;
        while done < n {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || drain(held, done, n)) {
                Ok(m) => done += m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        total += n as u64;
    }
}

/// Forwards both directions between `a` and `b` until both have ended: (bytes a → b,
/// bytes b → a). A direction that turns bulk toward a peer on this node switches its
/// sending socket to `local_congestion` (see
/// [`super::PlaneConfig::local_congestion_control`]).
pub async fn bidirectional(
    a: &mut TcpStream,
    b: &mut TcpStream,
    local_congestion: Option<&str>,
) -> io::Result<(u64, u64)> {
    let (mut a_read, mut a_write) = a.split();
    let (mut b_read, mut b_write) = b.split();
    tokio::try_join!(
        one_way(&mut a_read, &mut b_write, local_congestion),
        one_way(&mut b_read, &mut a_write, local_congestion)
    )
}

/// Switches `to` to congestion control `cc` when its peer is an address of this
/// host (loopback, a pod or ClusterIP address on the pod interface): a hop that never
/// leaves the machine. A peer elsewhere keeps the system's choice.
fn tune_local_hop(to: &TcpStream, cc: &str) {
    let Ok(peer) = to.peer_addr() else { return };
    if !is_local_address(peer.ip()) {
        return;
    }
    if let Err(e) = rustix::net::sockopt::set_tcp_congestion(to, cc) {
        tracing::debug!(%peer, cc, error = %e, "cannot set the congestion control of a local hop");
    }
}

/// Whether `ip` is an address of this host: only those can be bound (one system call,
/// paid once per bulk stream). With `net.ipv4.ip_nonlocal_bind` set every address
/// binds, and every hop counts as local.
pub(crate) fn is_local_address(ip: std::net::IpAddr) -> bool {
    ip.is_loopback() || std::net::UdpSocket::bind((ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_ended, pair, read_pattern_slowly, write_pattern};
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn both_directions_with_half_close() {
        // client ⇄ (p1 | proxy | p2) ⇄ server
        let (mut client, mut p1) = pair().await;
        let (mut p2, mut server) = pair().await;
        let relay = tokio::spawn(async move { bidirectional(&mut p1, &mut p2, None).await });
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(
            got, big,
            "client → server bytes arrive intact, then end of stream"
        );
        server.write_all(b"reply after half-close").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"reply after half-close");
        let (up, down) = relay.await.unwrap().unwrap();
        assert_eq!((up, down), (big.len() as u64, 22));
    }

    #[tokio::test]
    async fn a_bulk_stream_to_a_local_peer_switches_to_the_local_congestion_control() {
        let (mut client, mut p1) = pair().await;
        let (mut p2, mut server) = pair().await;
        let system = rustix::net::sockopt::tcp_congestion(&p1).unwrap();
        let local = if system == "reno" { "cubic" } else { "reno" };
        let relay = tokio::spawn(async move {
            let moved = bidirectional(&mut p1, &mut p2, Some(local)).await.unwrap();
            (moved, p1, p2)
        });
        client.write_all(&vec![7u8; 1 << 20]).await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 1 << 20);
        drop(server);
        let ((up, down), p1, p2) = relay.await.unwrap();
        assert_eq!((up, down), (1 << 20, 0));
        assert_eq!(
            rustix::net::sockopt::tcp_congestion(&p2).unwrap(),
            local,
            "the bulk direction's sending socket, to a loopback peer"
        );
        assert_eq!(
            rustix::net::sockopt::tcp_congestion(&p1).unwrap(),
            system,
            "the direction that carried nothing keeps the system's"
        );
        assert!(is_local_address("127.0.0.1".parse().unwrap()));
        assert!(
            !is_local_address("192.0.2.1".parse().unwrap()),
            "TEST-NET-1"
        );
    }

    #[tokio::test]
    async fn the_copy_loop_without_a_pipe_moves_every_byte_in_order() {
        let (client, p1) = pair().await;
        let (p2, mut server) = pair().await;
        let relay = tokio::spawn(async move { copy_to_end(&p1, &p2).await });
        let len = 3_000_000u32;
        let writer = write_pattern(client, len);
        read_pattern_slowly(&mut server, len).await;
        assert_eq!(relay.await.unwrap().unwrap(), u64::from(len));
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn a_slow_receiver_gets_every_byte_in_order() {
        // The pipe fills while the receiver lags: order and count must hold.
        let (client, mut p1) = pair().await;
        let (mut p2, mut server) = pair().await;
        let relay =
            tokio::spawn(async move { bidirectional(&mut p1, &mut p2, Some("cubic")).await });
        let len = 24_000_000u32;
        let writer = write_pattern(client, len);
        read_pattern_slowly(&mut server, len).await;
        assert_ended(&mut server).await;
        drop(server);
        drop(writer.await.unwrap());
        let (up, _) = relay.await.unwrap().unwrap();
        assert_eq!(up, u64::from(len));
    }
}
