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
use super::spdy::{Decoder, Encoder, Frame, Headers};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const V4: &str = "v4.channel.k8s.io";
/// v5's close-a-stream channel.
const CLOSE: u8 = 255;

/// The peer's frames, read as they are needed. Cancel-safe (a `select!` may drop
/// [`FrameReader::next`]): the decoder only changes after a read completed.
pub(super) struct FrameReader<R = OwnedReadHalf> {
    rd: R,
    dec: Decoder,
    buf: Vec<u8>,
}

impl<R: tokio::io::AsyncRead + Unpin> FrameReader<R> {
    pub(super) fn new(rd: R) -> Self {
        FrameReader {
            rd,
            dec: Decoder::default(),
            buf: vec![0u8; 32 * 1024],
        }
    }

    /// The next frame; `None` when the connection ends or sends garbage.
    pub(super) async fn next(&mut self) -> Option<Frame> {
        loop {
            match self.dec.next_frame() {
                Ok(Some(f)) => return Some(f),
                Ok(None) => {}
                Err(e) => {
                    debug!(error = %e, "spdy: bad frame; ending the session");
                    return None;
                }
            }
            match self.rd.read(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.dec.push(&self.buf[..n]),
            }
        }
    }
}

/// Frames to the streaming server (one write per call).
struct FrameWriter {
    wr: OwnedWriteHalf,
    enc: Encoder,
}

impl FrameWriter {
    /// Sends `frames`; false when the connection is gone.
    async fn send(&mut self, frames: &[Frame]) -> bool {
        let mut out = Vec::new();
        for f in frames {
            if self.enc.encode(f, &mut out).is_err() {
                return false;
            }
        }
        out.is_empty() || self.wr.write_all(&out).await.is_ok()
    }

    /// Ends one of our streams (half-close).
    async fn finish(&mut self, stream_id: u32) -> bool {
        self.send(&[fin(stream_id)]).await
    }
}

fn fin(stream_id: u32) -> Frame {
    Frame::Data {
        stream_id,
        fin: true,
        data: Default::default(),
    }
}

/// The client's side of a session at `url`: the upgrade, then our streams opened
/// (`(id, headers)`, odd ids), the first — the error stream, which carries nothing
/// from us — half-closed at once, as upstream's clients do.
async fn open_session(
    url: &str,
    protocol: &str,
    streams: &[(u32, Headers)],
) -> Result<(FrameReader, FrameWriter), String> {
    let (rd, wr, leftover) = spdy_connect(url, protocol).await?;
    let mut reader = FrameReader::new(rd);
    reader.dec.push(&leftover);
    let mut writer = FrameWriter {
        wr,
        enc: Encoder::default(),
    };
    let mut frames: Vec<Frame> = streams
        .iter()
        .map(|(id, headers)| Frame::SynStream {
            stream_id: *id,
            associated: 0,
            fin: false,
            headers: headers.clone(),
        })
        .collect();
    if let Some((first, _)) = streams.first() {
        frames.push(fin(*first));
    }
    if !writer.send(&frames).await {
        return Err(format!("streaming server {url} closed the connection"));
    }
    Ok((reader, writer))
}

/// Relays `client` to the streaming server at `url` over SPDY until the command ends.
pub async fn relay_spdy(client: WebSocket, url: String, opts: Options) {
    let (mut c_sink, mut c_stream) = client.split();
    let close = Message::Close(Some(CloseFrame {
        code: 1000,
        reason: "".into(),
    }));
    // Streams as upstream's v4 client opens them: error first, then the stdio the
    // exec asked for.
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
    let mut stream_of = std::collections::HashMap::new();
    let mut channel_of = std::collections::HashMap::new();
    let mut streams = Vec::new();
    for (i, (kind, channel)) in kinds.iter().enumerate() {
        let id = 1 + 2 * i as u32;
        stream_of.insert(*channel, id);
        channel_of.insert(id, *channel);
        streams.push((id, vec![("streamtype".to_string(), kind.to_string())]));
    }
    let (mut reader, mut writer) = match open_session(&url, V4, &streams).await {
        Ok(s) => s,
        Err(msg) => {
            warn!(%url, error = %msg, "cannot reach the runtime's streaming server");
            let st = remotecommand::status(&Outcome::Failed(msg), &opts.command);
            let _ = c_sink
                .send(Message::Binary(
                    error_frame(st.to_string().as_bytes()).into(),
                ))
                .await;
            let _ = c_sink.send(close).await;
            return;
        }
    };
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
    while !open.is_empty() {
        tokio::select! {
            frame = reader.next() => match frame {
                None | Some(Frame::GoAway { .. }) => break,
                Some(Frame::Data { stream_id, fin, data }) => {
                    match channel_of.get(&stream_id).copied() {
                        Some(remotecommand::ERROR) => status.extend_from_slice(&data),
                        Some(ch) if !data.is_empty() => {
                            let mut m = Vec::with_capacity(data.len() + 1);
                            m.push(ch);
                            m.extend_from_slice(&data);
                            if c_sink.send(Message::Binary(m.into())).await.is_err() {
                                break;
                            }
                        }
                        _ => {}
                    }
                    if fin {
                        open.remove(&stream_id);
                    }
                }
                Some(Frame::SynReply { stream_id, fin: true, .. })
                | Some(Frame::Headers { stream_id, fin: true, .. })
                | Some(Frame::RstStream { stream_id, .. }) => {
                    open.remove(&stream_id);
                }
                Some(Frame::Ping { id }) => {
                    if !writer.send(&[Frame::Ping { id }]).await {
                        break;
                    }
                }
                Some(_) => {}
            },
            m = c_stream.next(), if client_open => {
                let sent = match m {
                    Some(Ok(Message::Binary(data))) if !data.is_empty() => {
                        let (ch, rest) = (data[0], data.slice(1..));
                        if ch == CLOSE {
                            // v5: the client closed one of its streams.
                            match rest.first().and_then(|c| stream_of.get(c)) {
                                Some(id) => writer.finish(*id).await,
                                None => true,
                            }
                        } else if let Some(id) = stream_of.get(&ch) {
                            writer
                                .send(&[Frame::Data { stream_id: *id, fin: false, data: rest }])
                                .await
                        } else {
                            true
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        // The client is gone: end its streams (stdin EOF for v4).
                        client_open = false;
                        let mut ok = true;
                        for ch in [remotecommand::STDIN, remotecommand::RESIZE] {
                            if let Some(id) = stream_of.get(&ch) {
                                ok &= writer.finish(*id).await;
                            }
                        }
                        ok
                    }
                    _ => true,
                };
                if !sent {
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
    let _ = c_sink.send(Message::Binary(error_frame(&st).into())).await;
    let _ = c_sink.send(close).await;
    let _ = writer.wr.shutdown().await;
}

fn error_frame(status: &[u8]) -> Vec<u8> {
    let mut frame = vec![remotecommand::ERROR];
    frame.extend_from_slice(status);
    frame
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
            let streams = [("error", ERROR_STREAM), ("data", DATA_STREAM)].map(|(kind, id)| {
                let headers = vec![
                    ("streamtype".to_string(), kind.to_string()),
                    ("port".to_string(), port.to_string()),
                    ("requestid".to_string(), "0".to_string()),
                ];
                (id, headers)
            });
            let (reader, writer) = open_session(&url, PORT_FORWARD, &streams)
                .await
                .map_err(fail)?;
            let (ours, theirs) = tokio::io::duplex(256 * 1024);
            tokio::spawn(pump_port(reader, writer, theirs, port));
            Ok(Box::new(ours) as super::spdy::PodConn)
        })
    })
}

const PORT_FORWARD: &str = "portforward.k8s.io";
const ERROR_STREAM: u32 = 1;
const DATA_STREAM: u32 = 3;

/// Moves one forwarded connection's bytes between `local` and the SPDY data stream.
async fn pump_port(
    mut reader: FrameReader,
    mut writer: FrameWriter,
    local: tokio::io::DuplexStream,
    port: u16,
) {
    let (mut lr, mut lw) = tokio::io::split(local);
    let mut lbuf = vec![0u8; 32 * 1024];
    let (mut remote_open, mut local_open) = (true, true);
    let mut error = Vec::new();
    while (remote_open || local_open) && error.is_empty() {
        tokio::select! {
            frame = reader.next() => match frame {
                None | Some(Frame::GoAway { .. }) => break,
                Some(Frame::RstStream { stream_id: DATA_STREAM, .. }) => break,
                Some(Frame::Data { stream_id: DATA_STREAM, fin, data }) => {
                    if !data.is_empty() && lw.write_all(&data).await.is_err() {
                        break;
                    }
                    if fin {
                        remote_open = false;
                        let _ = lw.shutdown().await;
                    }
                }
                Some(Frame::Data { stream_id: ERROR_STREAM, data, .. }) => error.extend_from_slice(&data),
                Some(Frame::Ping { id }) => {
                    if !writer.send(&[Frame::Ping { id }]).await {
                        break;
                    }
                }
                Some(_) => {}
            },
            n = lr.read(&mut lbuf), if local_open => {
                let sent = match n {
                    Ok(0) | Err(_) => {
                        local_open = false;
                        writer.finish(DATA_STREAM).await
                    }
                    Ok(n) => {
                        let data = bytes::Bytes::copy_from_slice(&lbuf[..n]);
                        writer.send(&[Frame::Data { stream_id: DATA_STREAM, fin: false, data }]).await
                    }
                };
                if !sent {
                    break;
                }
            }
        }
    }
    if !error.is_empty() {
        warn!(port, error = %String::from_utf8_lossy(&error), "port-forward through the runtime failed");
    }
    let _ = lw.shutdown().await;
    let _ = writer.wr.shutdown().await;
}
