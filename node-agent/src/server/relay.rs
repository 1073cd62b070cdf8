//! Exec and attach for remote runtimes (containerd): the client's WebSocket stream
//! relayed frame by frame to the runtime's streaming server at the URL CRI `Exec` /
//! `Attach` returned, as upstream's kubelet proxies it.
//!
//! The kubelet speaks `v4.channel.k8s.io` to the runtime (containerd's streaming
//! server predates v5) and whatever its client chose (v5 or v4) to the client: the
//! frames are the same (one channel byte, then data) but for v5's close frames
//! (channel 255), which v4 has no way to say and are dropped — a v4 runtime learns
//! that stdin ended when the client's connection closes.

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as UpMessage;
use tracing::{debug, warn};

use super::remotecommand::{self, Outcome};

const V4: &str = "v4.channel.k8s.io";
/// v5's close-a-stream channel.
const CLOSE: u8 = 255;

/// Relays `client` to the streaming server at `url` until either side ends.
pub async fn relay(client: WebSocket, url: String, command: Vec<String>) {
    let (mut c_sink, mut c_stream) = client.split();
    let upstream = match connect(&url).await {
        Ok(u) => u,
        Err(msg) => {
            warn!(%url, error = %msg, "cannot reach the runtime's streaming server");
            let st = remotecommand::status(&Outcome::Failed(msg), &command);
            let mut frame = vec![remotecommand::ERROR];
            frame.extend_from_slice(st.to_string().as_bytes());
            let _ = c_sink.send(Message::Binary(frame.into())).await;
            let _ = c_sink
                .send(Message::Close(Some(CloseFrame {
                    code: 1000,
                    reason: "".into(),
                })))
                .await;
            return;
        }
    };
    let (mut u_sink, mut u_stream) = upstream.split();
    loop {
        tokio::select! {
            m = c_stream.next() => match m {
                Some(Ok(Message::Binary(data))) => {
                    if data.first() == Some(&CLOSE) {
                        continue;
                    }
                    if u_sink.send(UpMessage::Binary(data)).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Text(t))) => {
                    if u_sink.send(UpMessage::Text(t.as_str().into())).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    let _ = u_sink.send(UpMessage::Close(None)).await;
                    break;
                }
            },
            m = u_stream.next() => match m {
                Some(Ok(UpMessage::Binary(data))) => {
                    if c_sink.send(Message::Binary(data)).await.is_err() {
                        break;
                    }
                }
                Some(Ok(UpMessage::Text(t))) => {
                    // Older servers send base64 text frames only when asked to.
                    if c_sink.send(Message::Text(t.as_str().into())).await.is_err() {
                        break;
                    }
                }
                Some(Ok(UpMessage::Close(_))) | None => {
                    let _ = c_sink
                        .send(Message::Close(Some(CloseFrame { code: 1000, reason: "".into() })))
                        .await;
                    break;
                }
                Some(Err(e)) => {
                    debug!(error = %e, "streaming server connection ended");
                    let _ = c_sink
                        .send(Message::Close(Some(CloseFrame { code: 1000, reason: "".into() })))
                        .await;
                    break;
                }
                Some(Ok(_)) => {}
            },
        }
    }
}

type Upstream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str) -> Result<Upstream, String> {
    let ws_url = if let Some(rest) = url.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = url.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        url.to_string()
    };
    let mut req = ws_url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("bad streaming URL {url:?}: {e}"))?;
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", http::HeaderValue::from_static(V4));
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .map_err(|e| format!("streaming server {url}: {e}"))?;
    let chosen = resp
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok());
    if chosen != Some(V4) {
        return Err(format!(
            "streaming server {url} chose protocol {chosen:?}, not {V4}"
        ));
    }
    Ok(ws)
}
