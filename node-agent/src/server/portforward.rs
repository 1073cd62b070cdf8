//! `/portForward/{ns}/{pod}`: kubectl's SPDY/3.1 port-forward, either over a plain
//! `Upgrade: SPDY/3.1` connection or tunnelled in a WebSocket
//! (`SPDY/3.1+portforward.k8s.io`, kubectl's default since 1.31), and the WebSocket
//! `v4.channel.k8s.io` protocol python and kube-rs use. For a Wasm pod the target is
//! the pod's IP (sandbox status, in the pod's `status.podIP`) and the requested port.

use std::net::IpAddr;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::spdy::Dial;

pub const SPDY_OVER_WS: &str = "SPDY/3.1+portforward.k8s.io";
pub const WS_V4: &str = "v4.channel.k8s.io";
/// The protocol named in `X-Stream-Protocol-Version` for plain SPDY.
pub const SPDY_PROTOCOL: &str = "portforward.k8s.io";

/// Dialing a pod port gives up after this long.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Dials `ip:port` for pod `pod` (uid `uid`), with upstream's error wording.
pub fn dialer(ip: IpAddr, pod: String, uid: String) -> Dial {
    std::sync::Arc::new(move |port: u16| {
        let (pod, uid) = (pod.clone(), uid.clone());
        Box::pin(async move {
            let fail =
                |e: String| format!("error forwarding port {port} to pod {pod}, uid {uid}: {e}");
            match tokio::time::timeout(DIAL_TIMEOUT, tokio::net::TcpStream::connect((ip, port)))
                .await
            {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    Ok(Box::new(s) as super::spdy::PodConn)
                }
                Ok(Err(e)) => Err(fail(format!("dial tcp {ip}:{port}: connect: {e}"))),
                Err(_) => Err(fail(format!("dial tcp {ip}:{port}: i/o timeout"))),
            }
        })
    })
}

/// A WebSocket as a byte pipe (the SPDY tunnel): binary messages are chunks of the
/// stream (empty ones included, and meaningless), text is a protocol error, close
/// ends it.
pub fn ws_pipe(socket: WebSocket) -> tokio::io::DuplexStream {
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    let (mut sink, mut stream) = socket.split();
    let (mut r, mut w) = tokio::io::split(ours);
    tokio::spawn(async move {
        while let Some(Ok(m)) = stream.next().await {
            match m {
                Message::Binary(b) if w.write_all(&b).await.is_err() => break,
                Message::Close(_) | Message::Text(_) => break,
                _ => {}
            }
        }
        let _ = w.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink
                        .send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: 1000,
                reason: "".into(),
            })))
            .await;
    });
    theirs
}

/// The `ports` query parameter (`80,8080` or repeated).
pub fn ports_from_query(query: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if k == "ports" {
            for p in v.split(',').filter(|p| !p.is_empty()) {
                ports.push(
                    p.trim()
                        .parse::<u16>()
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or_else(|| format!("invalid port {p:?}"))?,
                );
            }
        }
    }
    if ports.is_empty() {
        return Err("query parameter \"port\" is required".into());
    }
    Ok(ports)
}

/// The WebSocket `v4.channel.k8s.io` port-forward: for the i-th port, channel 2i
/// carries data and 2i+1 errors; each channel first gets the port (little endian).
/// One connection per port; the socket closes when every target has closed.
pub async fn serve_ws_v4(socket: WebSocket, ports: Vec<u16>, dial: Dial) {
    let (mut sink, mut stream) = socket.split();
    for (i, p) in ports.iter().enumerate() {
        for ch in [2 * i as u8, 2 * i as u8 + 1] {
            let m = vec![ch, (*p & 0xff) as u8, (*p >> 8) as u8];
            if sink.send(Message::Binary(m.into())).await.is_err() {
                return;
            }
        }
    }
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(32);
    let mut writers = Vec::new();
    let mut open = 0usize;
    for (i, p) in ports.iter().enumerate() {
        let data_ch = 2 * i as u8;
        match dial(*p).await {
            Ok(tcp) => {
                let (mut r, w) = tokio::io::split(tcp);
                writers.push(Some(w));
                open += 1;
                let tx = out_tx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 32 * 1024];
                    while let Ok(n) = r.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let mut m = Vec::with_capacity(n + 1);
                        m.push(data_ch);
                        m.extend_from_slice(&buf[..n]);
                        if tx.send(m).await.is_err() {
                            return;
                        }
                    }
                    // An empty data message marks this target closed.
                    let _ = tx.send(vec![data_ch]).await;
                });
            }
            Err(msg) => {
                writers.push(None);
                let mut m = vec![data_ch + 1];
                m.extend_from_slice(msg.as_bytes());
                let _ = sink.send(Message::Binary(m.into())).await;
            }
        }
    }
    drop(out_tx);
    while open > 0 {
        tokio::select! {
            m = out_rx.recv() => match m {
                Some(m) if m.len() == 1 => open -= 1,
                Some(m) => {
                    if sink.send(Message::Binary(m.into())).await.is_err() {
                        return;
                    }
                }
                None => break,
            },
            m = stream.next() => match m {
                Some(Ok(Message::Binary(b))) => {
                    if let Some((ch, data)) = b.split_first() {
                        let i = usize::from(*ch / 2);
                        if ch % 2 == 0 {
                            if let Some(Some(w)) = writers.get_mut(i) {
                                if w.write_all(data).await.is_err() {
                                    writers[i] = None;
                                }
                            }
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                _ => {}
            },
        }
    }
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code: 1000,
            reason: "".into(),
        })))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_query() {
        assert_eq!(ports_from_query("ports=80,8080").unwrap(), [80, 8080]);
        assert_eq!(ports_from_query("&ports=80&ports=81").unwrap(), [80, 81]);
        assert!(ports_from_query("ports=x").is_err());
        assert!(ports_from_query("").is_err());
    }
}
