//! Helpers for the data path's unit tests.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A connected pair of sockets on loopback.
pub async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (s, _) = l.accept().await.unwrap();
    (c, s)
}

/// Writes `len` bytes of a pattern to `client` in odd-sized chunks, then shuts it
/// down for writing; the task returns the socket.
pub fn write_pattern(mut client: TcpStream, len: u32) -> JoinHandle<TcpStream> {
    tokio::spawn(async move {
        let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
        for chunk in data.chunks(100_003) {
            client.write_all(chunk).await.unwrap();
        }
        client.shutdown().await.unwrap();
        client
    })
}

/// Reads `len` bytes of [`write_pattern`]'s pattern, checking each, and lagging
/// behind the writer (small reads, a yield every megabyte) so the queues between
/// them fill.
pub async fn read_pattern_slowly(server: &mut TcpStream, len: u32) {
    let mut got = 0u32;
    let mut buf = vec![0u8; 7_919];
    while got < len {
        let want = buf.len().min((len - got) as usize);
        let n = server.read(&mut buf[..want]).await.unwrap();
        assert!(n > 0, "end of stream after {got} of {len} bytes");
        for b in &buf[..n] {
            assert_eq!(*b, (got % 253) as u8, "byte {got}");
            got += 1;
        }
        if got % 1_000_000 < 7_919 {
            tokio::task::yield_now().await;
        }
    }
}

/// Asserts `s` is at end of stream.
pub async fn assert_ended(s: &mut TcpStream) {
    let mut b = [0u8; 1];
    assert_eq!(s.read(&mut b).await.unwrap(), 0, "more than expected");
}
