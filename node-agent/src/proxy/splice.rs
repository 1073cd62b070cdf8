//! TCP forwarding that is zero-copy for bulk data: once a direction carries a stream,
//! bytes move socket → pipe → socket with splice(2) and never enter user space (a
//! bulk stream through a read/write copy loop reached a quarter of a direct
//! connection's throughput). Both directions run in the connection's task on the
//! sockets' tokio readiness.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::io::Interest;
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
async fn one_way(from: &TcpStream, to: &TcpStream, pipe: &Pipe) -> io::Result<u64> {
    let mut total = 0u64;
    let mut buf = [0u8; COPY_BUF];
    let mut bulk = false;
    loop {
        from.readable().await?;
        let n = if bulk {
            from.try_io(Interest::READABLE, || splice(from, &pipe.write, CHUNK))
        } else {
            from.try_read(&mut buf)
        };
        let n = match n {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        let mut done = 0;
        while done < n {
            to.writable().await?;
            let wrote = if bulk {
                to.try_io(Interest::WRITABLE, || splice(&pipe.read, to, n - done))
            } else {
                to.try_write(&buf[done..n])
            };
            match wrote {
                Ok(m) => done += m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        total += n as u64;
        bulk = bulk || n == COPY_BUF;
    }
    let _ = rustix::net::shutdown(to, rustix::net::Shutdown::Write);
    Ok(total)
}

/// Forwards both directions between `a` and `b` until both have ended: (bytes a → b,
/// bytes b → a). Falls back to tokio's copy loop when pipes cannot be had (EMFILE).
pub async fn bidirectional(a: &mut TcpStream, b: &mut TcpStream) -> io::Result<(u64, u64)> {
    let pipes = Pipe::new().and_then(|p| Ok((p, Pipe::new()?)));
    let Ok((up, down)) = pipes else {
        return tokio::io::copy_bidirectional(a, b).await;
    };
    let (a, b) = (&*a, &*b);
    tokio::try_join!(one_way(a, b, &up), one_way(b, a, &down))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connected pair of sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    #[tokio::test]
    async fn both_directions_with_half_close() {
        // client ⇄ (p1 | proxy | p2) ⇄ server
        let (mut client, mut p1) = pair().await;
        let (mut p2, mut server) = pair().await;
        let relay = tokio::spawn(async move { bidirectional(&mut p1, &mut p2).await });
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
}
