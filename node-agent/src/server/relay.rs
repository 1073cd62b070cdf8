//! Streaming for remote runtimes (containerd), through the runtime's streaming server
//! at the URL CRI `Exec` / `PortForward` returned, as upstream's kubelet does: exec
//! sessions relayed from the client's WebSocket ([`relay_spdy`]), port-forward
//! connections opened in the pod's network namespace by the runtime
//! ([`cri_port_dialer`], so a process listening on the container's 127.0.0.1 is
//! reached too).
//!
//! Toward the runtime the kubelet speaks SPDY/3.1 with `v4.channel.k8s.io`, as
//! upstream's API server and kubelet do: one SPDY stream per channel, so the client
//! closing its stdin (v5's close frame) becomes a half-close of the stdin stream and
//! `cat`-like commands see end of file (the WebSocket form of v4, which containerd's
//! server also speaks, cannot say that). The channel
//! frames toward the client are the same for v4 and v5.

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::{SinkExt, StreamExt};
use tracing::{debug, warn};

use super::remotecommand::{self, Options, Outcome};
use super::spdy::{Decoder, Encoder, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const V4: &str = "v4.channel.k8s.io";
/// v5's close-a-stream channel.
const CLOSE: u8 = 255;

/// Relays `client` to the streaming server at `url` over SPDY until the command ends.
pub async fn relay_spdy(client: WebSocket, url: String, opts: Options) {
    let (mut c_sink, mut c_stream) = client.split();
    let fail = |msg: String| {
        let st = remotecommand::status(&Outcome::Failed(msg), &opts.command);
        let mut frame = vec![remotecommand::ERROR];
        frame.extend_from_slice(st.to_string().as_bytes());
        frame
    };
    let (rd, mut wr, leftover) = match spdy_connect(&url, V4).await {
        Ok(c) => c,
        Err(msg) => {
            warn!(%url, error = %msg, "cannot reach the runtime's streaming server");
            let _ = c_sink.send(Message::Binary(fail(msg).into())).await;
            let _ = c_sink
                .send(Message::Close(Some(CloseFrame {
                    code: 1000,
                    reason: "".into(),
                })))
                .await;
            return;
        }
    };
    // Streams as upstream's v4 client opens them: error first, then the stdio the
    // exec asked for (client streams have odd ids).
    let mut kinds = vec![("error", remotecommand::ERROR)];
    if opts.stdin {
        kinds.push(("stdin", remotecommand::STDIN));
    }
    if opts.stdout {
        kinds.push(("stdout", remotecommand::STDOUT));
    }
    if opts.stderr {
        kinds.push(("stderr", remotecommand::STDERR));
    }
    if opts.tty {
        kinds.push(("resize", remotecommand::RESIZE));
    }
    let mut enc = Encoder::default();
    let mut out = Vec::new();
    let mut stream_of = std::collections::HashMap::new();
    let mut channel_of = std::collections::HashMap::new();
    for (i, (kind, channel)) in kinds.iter().enumerate() {
        let id = 1 + 2 * i as u32;
        stream_of.insert(*channel, id);
        channel_of.insert(id, *channel);
        let f = Frame::SynStream {
            stream_id: id,
            associated: 0,
            fin: false,
            headers: vec![("streamtype".into(), (*kind).into())],
        };
        if enc.encode(&f, &mut out).is_err() {
            return;
        }
    }
    // The error stream carries nothing from us.
    let _ = enc.encode(
        &Frame::Data {
            stream_id: 1,
            fin: true,
            data: Default::default(),
        },
        &mut out,
    );
    if wr.write_all(&out).await.is_err() {
        return;
    }
    let mut dec = Decoder::default();
    dec.push(&leftover);
    let mut rd = rd;
    let mut buf = vec![0u8; 32 * 1024];
    let mut status = Vec::new();
    // Streams the server still writes to (stdout, stderr, error).
    let mut open: std::collections::HashSet<u32> = channel_of
        .iter()
        .filter(|(_, c)| {
            matches!(
                **c,
                remotecommand::STDOUT | remotecommand::STDERR | remotecommand::ERROR
            )
        })
        .map(|(id, _)| *id)
        .collect();
    let mut client_open = true;
    'session: loop {
        // Frames already buffered first.
        loop {
            let frame = match dec.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    debug!(error = %e, "spdy: bad frame from the streaming server");
                    break 'session;
                }
            };
            match frame {
                Frame::Data {
                    stream_id,
                    fin,
                    data,
                } => {
                    match channel_of.get(&stream_id).copied() {
                        Some(remotecommand::ERROR) => status.extend_from_slice(&data),
                        Some(ch) if !data.is_empty() => {
                            let mut m = Vec::with_capacity(data.len() + 1);
                            m.push(ch);
                            m.extend_from_slice(&data);
                            if c_sink.send(Message::Binary(m.into())).await.is_err() {
                                break 'session;
                            }
                        }
                        _ => {}
                    }
                    if fin {
                        open.remove(&stream_id);
                    }
                }
                Frame::SynReply {
                    stream_id,
                    fin: true,
                    ..
                }
                | Frame::Headers {
                    stream_id,
                    fin: true,
                    ..
                } => {
                    open.remove(&stream_id);
                }
                Frame::RstStream { stream_id, .. } => {
                    open.remove(&stream_id);
                }
                Frame::Ping { id } => {
                    let mut o = Vec::new();
                    if enc.encode(&Frame::Ping { id }, &mut o).is_ok()
                        && wr.write_all(&o).await.is_err()
                    {
                        break 'session;
                    }
                }
                Frame::GoAway { .. } => break 'session,
                _ => {}
            }
        }
        if open.is_empty() {
            break;
        }
        tokio::select! {
            n = rd.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => dec.push(&buf[..n]),
            },
            m = c_stream.next(), if client_open => {
                let mut o = Vec::new();
                match m {
                    Some(Ok(Message::Binary(data))) if !data.is_empty() => {
                        let (ch, rest) = (data[0], data.slice(1..));
                        if ch == CLOSE {
                            // v5: the client closed one of its streams.
                            if let Some(id) = rest.first().and_then(|c| stream_of.get(c)) {
                                let _ = enc.encode(&Frame::Data { stream_id: *id, fin: true, data: Default::default() }, &mut o);
                            }
                        } else if let Some(id) = stream_of.get(&ch) {
                            let _ = enc.encode(&Frame::Data { stream_id: *id, fin: false, data: rest }, &mut o);
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        // The client is gone: end its streams (stdin EOF for v4).
                        client_open = false;
                        for ch in [remotecommand::STDIN, remotecommand::RESIZE] {
                            if let Some(id) = stream_of.get(&ch) {
                                let _ = enc.encode(&Frame::Data { stream_id: *id, fin: true, data: Default::default() }, &mut o);
                            }
                        }
                    }
                    _ => {}
                }
                if !o.is_empty() && wr.write_all(&o).await.is_err() {
                    break;
                }
            }
        }
    }
    // The error stream's status as the client's error channel (empty: success).
    let st: Vec<u8> = if status.is_empty() {
        remotecommand::status(&Outcome::Exited(0), &opts.command)
            .to_string()
            .into_bytes()
    } else {
        status
    };
    let mut frame = vec![remotecommand::ERROR];
    frame.extend_from_slice(&st);
    let _ = c_sink.send(Message::Binary(frame.into())).await;
    let _ = c_sink
        .send(Message::Close(Some(CloseFrame {
            code: 1000,
            reason: "".into(),
        })))
        .await;
    let _ = wr.shutdown().await;
}

/// Opens the SPDY upgrade to the streaming server; returns the connection halves and
/// what was read past the HTTP response.
async fn spdy_connect(
    url: &str,
    protocol: &str,
) -> Result<
    (
        tokio::net::tcp::OwnedReadHalf,
        tokio::net::tcp::OwnedWriteHalf,
        Vec<u8>,
    ),
    String,
> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("bad streaming URL {url:?}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("streaming URL {url}: only http is supported"));
    }
    let host = uri
        .host()
        .ok_or_else(|| format!("streaming URL {url} has no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("streaming server {url}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {protocol}\r\nContent-Length: 0\r\n\r\n"
    );
    wr.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("streaming server {url}: {e}"))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        let n = rd
            .read(&mut buf)
            .await
            .map_err(|e| format!("streaming server {url}: {e}"))?;
        if n == 0 {
            return Err(format!("streaming server {url} closed the connection"));
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if head.len() > 64 * 1024 {
            return Err(format!("streaming server {url}: response head too large"));
        }
    };
    let text = String::from_utf8_lossy(&head[..end]).to_string();
    let status_line = text.lines().next().unwrap_or("");
    if !status_line.contains(" 101 ") {
        let body = String::from_utf8_lossy(&head[end..]).trim().to_string();
        return Err(format!(
            "streaming server {url} answered {status_line:?} {body}"
        ));
    }
    let proto = text.lines().find_map(|l| {
        l.split_once(':')
            .filter(|(k, _)| k.eq_ignore_ascii_case("x-stream-protocol-version"))
            .map(|(_, v)| v.trim().to_string())
    });
    if proto.as_deref() != Some(protocol) {
        return Err(format!(
            "streaming server {url} chose protocol {proto:?}, not {protocol}"
        ));
    }
    Ok((rd, wr, head[end..].to_vec()))
}

/// Dials a pod's port through the runtime's port-forward: one CRI `PortForward` (its
/// URL serves one session) and one SPDY session per connection, with upstream's
/// error and data stream pair.
pub fn cri_port_dialer(
    rt: std::sync::Arc<dyn crate::cri::CriRuntime>,
    sandbox: String,
    pod: String,
    uid: String,
) -> super::spdy::Dial {
    std::sync::Arc::new(move |port: u16| {
        let (rt, sandbox, pod, uid) = (rt.clone(), sandbox.clone(), pod.clone(), uid.clone());
        Box::pin(async move {
            let fail =
                |e: String| format!("error forwarding port {port} to pod {pod}, uid {uid}: {e}");
            let url = rt
                .port_forward(kelp_cri_api::v1::PortForwardRequest {
                    pod_sandbox_id: sandbox,
                    port: vec![i32::from(port)],
                })
                .await
                .map_err(|e| fail(e.message().to_string()))?
                .url;
            let (rd, wr, leftover) = spdy_connect(&url, PORT_FORWARD).await.map_err(fail)?;
            let (ours, theirs) = tokio::io::duplex(256 * 1024);
            tokio::spawn(pump_port(rd, wr, leftover, theirs, port));
            Ok(Box::new(ours) as super::spdy::PodConn)
        })
    })
}

const PORT_FORWARD: &str = "portforward.k8s.io";

/// Moves one forwarded connection's bytes between `local` and the SPDY data stream.
async fn pump_port(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    leftover: Vec<u8>,
    local: tokio::io::DuplexStream,
    port: u16,
) {
    const ERROR_STREAM: u32 = 1;
    const DATA_STREAM: u32 = 3;
    let mut enc = Encoder::default();
    let mut out = Vec::new();
    for (id, kind) in [(ERROR_STREAM, "error"), (DATA_STREAM, "data")] {
        let headers = vec![
            ("streamtype".to_string(), kind.to_string()),
            ("port".to_string(), port.to_string()),
            ("requestid".to_string(), "0".to_string()),
        ];
        if enc
            .encode(
                &Frame::SynStream {
                    stream_id: id,
                    associated: 0,
                    fin: false,
                    headers,
                },
                &mut out,
            )
            .is_err()
        {
            return;
        }
    }
    // Nothing goes up the error stream.
    let _ = enc.encode(
        &Frame::Data {
            stream_id: ERROR_STREAM,
            fin: true,
            data: Default::default(),
        },
        &mut out,
    );
    if wr.write_all(&out).await.is_err() {
        return;
    }
    let (mut lr, mut lw) = tokio::io::split(local);
    let mut dec = Decoder::default();
    dec.push(&leftover);
    let mut buf = vec![0u8; 32 * 1024];
    let mut lbuf = vec![0u8; 32 * 1024];
    let (mut remote_open, mut local_open) = (true, true);
    let mut error = Vec::new();
    'session: loop {
        loop {
            let frame = match dec.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    debug!(error = %e, "spdy: bad frame from the streaming server");
                    break 'session;
                }
            };
            match frame {
                Frame::Data {
                    stream_id: DATA_STREAM,
                    fin,
                    data,
                } => {
                    if !data.is_empty() && lw.write_all(&data).await.is_err() {
                        break 'session;
                    }
                    if fin {
                        remote_open = false;
                        let _ = lw.shutdown().await;
                    }
                }
                Frame::Data {
                    stream_id: ERROR_STREAM,
                    data,
                    ..
                } => error.extend_from_slice(&data),
                Frame::RstStream {
                    stream_id: DATA_STREAM,
                    ..
                }
                | Frame::GoAway { .. } => break 'session,
                Frame::Ping { id } => {
                    let mut o = Vec::new();
                    if enc.encode(&Frame::Ping { id }, &mut o).is_ok()
                        && wr.write_all(&o).await.is_err()
                    {
                        break 'session;
                    }
                }
                _ => {}
            }
        }
        if !error.is_empty() {
            warn!(port, error = %String::from_utf8_lossy(&error), "port-forward through the runtime failed");
            break;
        }
        if !remote_open && !local_open {
            break;
        }
        tokio::select! {
            n = rd.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => dec.push(&buf[..n]),
            },
            n = lr.read(&mut lbuf), if local_open => {
                let mut o = Vec::new();
                let frame = match n {
                    Ok(0) | Err(_) => {
                        local_open = false;
                        Frame::Data { stream_id: DATA_STREAM, fin: true, data: Default::default() }
                    }
                    Ok(n) => Frame::Data {
                        stream_id: DATA_STREAM,
                        fin: false,
                        data: bytes::Bytes::copy_from_slice(&lbuf[..n]),
                    },
                };
                if enc.encode(&frame, &mut o).is_err() || wr.write_all(&o).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = lw.shutdown().await;
    let _ = wr.shutdown().await;
}
