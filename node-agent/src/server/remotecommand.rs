//! The WebSocket remote-command protocol of `exec` and `attach`
//! (`v5.channel.k8s.io`, `v4.channel.k8s.io`): binary messages whose first byte is
//! the channel — 0 stdin, 1 stdout, 2 stderr, 3 error (one status JSON at the end),
//! 4 resize; v5 adds 255, the client's close of one of its streams (`[255, 0]`: stdin
//! hit end of file).

use std::future::Future;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use kelp_cri_api::streaming::StreamIo;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

pub const V5: &str = "v5.channel.k8s.io";
pub const V4: &str = "v4.channel.k8s.io";
/// What exec and attach offer, in preference order.
pub const PROTOCOLS: [&str; 2] = [V5, V4];

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
pub const CLOSE: u8 = 255;

/// What a remote-command request asks for (its query).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

fn truthy(v: &str) -> bool {
    matches!(v, "1" | "t" | "T" | "true" | "TRUE" | "True")
}

impl Options {
    /// From a raw query string (`command` repeats, one argument each).
    pub fn from_query(query: &str) -> Self {
        let mut o = Options::default();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "command" => o.command.push(v.into_owned()),
                "input" | "stdin" => o.stdin = truthy(&v),
                "output" | "stdout" => o.stdout = truthy(&v),
                "error" | "stderr" => o.stderr = truthy(&v),
                "tty" => o.tty = truthy(&v),
                _ => {}
            }
        }
        // With a terminal everything goes to stdout (kubectl drops stderr then).
        if o.tty {
            o.stderr = false;
        }
        o
    }
}

/// A frame for `channel`.
pub fn frame(channel: u8, data: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(data.len() + 1);
    f.push(channel);
    f.extend_from_slice(data);
    f
}

/// A message from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    Stdin(Bytes),
    Resize {
        width: u16,
        height: u16,
    },
    /// v5: the client closed its stream on this channel.
    Close(u8),
    Ignored,
}

pub fn parse_inbound(msg: &[u8], v5: bool) -> Inbound {
    match msg.split_first() {
        Some((&STDIN, rest)) => Inbound::Stdin(Bytes::copy_from_slice(rest)),
        Some((&RESIZE, rest)) => {
            let v: Value = serde_json::from_slice(rest).unwrap_or(Value::Null);
            let dim = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0) as u16;
            Inbound::Resize {
                width: dim("Width"),
                height: dim("Height"),
            }
        }
        Some((&CLOSE, [ch, ..])) if v5 => Inbound::Close(*ch),
        _ => Inbound::Ignored,
    }
}

/// How a command ended, as the kubelet reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    /// Could not run (not found, not running, runtime error): the message.
    Failed(String),
}

/// The status JSON sent on the error channel (upstream's shapes).
pub fn status(outcome: &Outcome, command: &[String]) -> Value {
    match outcome {
        Outcome::Exited(0) => json!({"metadata": {}, "status": "Success"}),
        Outcome::Exited(code) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!(
                "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
                command.join(" ")
            ),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Outcome::Failed(msg) => json!({
            "metadata": {},
            "status": "Failure",
            "message": msg,
            "reason": "InternalError",
            "code": 500,
        }),
    }
}

/// Runs one remote-command session on `socket`: builds the stdio `run` gets from the
/// options, relays the client's stdin and the command's output, then sends the
/// status and closes. A client that goes away stops the command (its future is
/// dropped).
pub async fn serve<F, Fut>(socket: WebSocket, v5: bool, opts: Options, run: F)
where
    F: FnOnce(StreamIo) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let (mut sink, mut stream) = socket.split();
    let mut stdin_writer = None;
    let stdin = opts.stdin.then(|| {
        let (r, w) = tokio::io::duplex(64 * 1024);
        stdin_writer = Some(w);
        Box::pin(r) as std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send + Sync>>
    });
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(16);
    let (err_tx, mut err_rx) = mpsc::channel::<Bytes>(16);
    let io = StreamIo {
        stdin,
        stdout: opts.stdout.then_some(out_tx),
        stderr: opts.stderr.then_some(err_tx),
    };
    let run = run(io);
    tokio::pin!(run);
    let mut outcome = None;
    let (mut out_open, mut err_open) = (true, true);
    while outcome.is_none() || out_open || err_open {
        tokio::select! {
            o = &mut run, if outcome.is_none() => outcome = Some(o),
            b = out_rx.recv(), if out_open => match b {
                Some(b) => {
                    if sink.send(Message::Binary(frame(STDOUT, &b).into())).await.is_err() {
                        return;
                    }
                }
                None => out_open = false,
            },
            b = err_rx.recv(), if err_open => match b {
                Some(b) => {
                    if sink.send(Message::Binary(frame(STDERR, &b).into())).await.is_err() {
                        return;
                    }
                }
                None => err_open = false,
            },
            m = stream.next() => match m {
                Some(Ok(Message::Binary(data))) => match parse_inbound(&data, v5) {
                    Inbound::Stdin(b) => {
                        if let Some(w) = stdin_writer.as_mut() {
                            if w.write_all(&b).await.is_err() {
                                stdin_writer = None;
                            }
                        }
                    }
                    Inbound::Close(STDIN) => stdin_writer = None,
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    // The client is gone: v4 clients end stdin this way; if the
                    // command is still running it is stopped (dropped) below
                    // unless it only waited for stdin.
                    stdin_writer = None;
                    if outcome.is_none() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
            },
        }
    }
    let outcome = outcome.unwrap_or(Outcome::Failed("no outcome".into()));
    let st = status(&outcome, &opts.command);
    let _ = sink
        .send(Message::Binary(
            frame(ERROR, st.to_string().as_bytes()).into(),
        ))
        .await;
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
    fn options_from_kubectl_query() {
        let o = Options::from_query(
            "command=sh&command=-c&command=echo+hi&container=c&stdin=true&stdout=true&stderr=true",
        );
        assert_eq!(o.command, ["sh", "-c", "echo hi"]);
        assert!(o.stdin && o.stdout && o.stderr && !o.tty);
        let t = Options::from_query("command=x&stdout=true&stderr=true&tty=true");
        assert!(t.tty && t.stdout && !t.stderr && !t.stdin);
    }

    #[test]
    fn channel_framing() {
        assert_eq!(frame(STDOUT, b"hi"), [1, b'h', b'i']);
        assert_eq!(
            parse_inbound(&[0, b'a'], true),
            Inbound::Stdin(Bytes::from_static(b"a"))
        );
        assert_eq!(parse_inbound(&[255, 0], true), Inbound::Close(0));
        assert_eq!(parse_inbound(&[255, 0], false), Inbound::Ignored);
        assert_eq!(
            parse_inbound(b"\x04{\"Width\":100,\"Height\":30}\n", true),
            Inbound::Resize {
                width: 100,
                height: 30
            }
        );
        assert_eq!(parse_inbound(&[], true), Inbound::Ignored);
    }

    #[test]
    fn status_shapes_are_upstreams() {
        assert_eq!(
            status(&Outcome::Exited(0), &[]),
            json!({"metadata": {}, "status": "Success"})
        );
        let s = status(&Outcome::Exited(3), &["fail".into()]);
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(
            s["details"]["causes"][0],
            json!({"reason": "ExitCode", "message": "3"})
        );
        assert_eq!(
            s["message"],
            "command terminated with non-zero exit code: error executing command [fail], exit code 3"
        );
        let f = status(&Outcome::Failed("container not running".into()), &[]);
        assert_eq!(f["status"], "Failure");
        assert_eq!(f["message"], "container not running");
    }
}
