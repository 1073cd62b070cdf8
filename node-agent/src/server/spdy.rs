//! SPDY/3.1, the subset kubectl speaks to a kubelet (no maintained crate exists): the
//! frame codec with zlib-compressed header blocks (one compression context per
//! direction for the whole session, the SPDY/3 preset dictionary, sync flushes),
//! and a server session where the client opens every stream.
//!
//! The session answers each `SYN_STREAM` with a `SYN_REPLY` (clients wait for it),
//! echoes `PING`s, acknowledges received data with `WINDOW_UPDATE`s, ignores
//! `SETTINGS`, and ends on `GOAWAY` or end of input.

use std::collections::HashMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// The SPDY/3 header compression dictionary (draft-mbelshe-httpbis-spdy-00 §2.6.10.1).
fn dictionary() -> Vec<u8> {
    const NAMES: &[&str] = &[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    let mut d = Vec::with_capacity(1423);
    for n in NAMES {
        d.extend_from_slice(&(n.len() as u32).to_be_bytes());
        d.extend_from_slice(n.as_bytes());
    }
    d.extend_from_slice(
        b"100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505\
203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized\
403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable\
Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT\
chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,\
text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
    );
    d
}

const VERSION: u16 = 3;
pub const FLAG_FIN: u8 = 0x01;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;
/// `RST_STREAM` status CANCEL.
pub const CANCEL: u32 = 5;
/// Largest frame payload accepted (SPDY's length field allows 16 MiB).
const MAX_FRAME: usize = 1 << 24;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpdyError {
    #[error("unsupported SPDY version {0}")]
    Version(u16),
    #[error("malformed {0} frame")]
    Malformed(&'static str),
    #[error("header block: {0}")]
    Compression(String),
}

/// Header name/value pairs (names lower-case; several values NUL-separated).
pub type Headers = Vec<(String, String)>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream_id: u32,
        fin: bool,
        data: Bytes,
    },
    SynStream {
        stream_id: u32,
        associated: u32,
        fin: bool,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings,
    Ping {
        id: u32,
    },
    GoAway {
        last_good: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    /// A control frame type this subset does not use (ignored, as the spec says).
    Unknown {
        kind: u16,
    },
}

/// The value of header `name`.
pub fn header<'a>(h: &'a Headers, name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Decodes frames from a byte stream (any chunking).
pub struct Decoder {
    buf: BytesMut,
    inflate: Decompress,
    dict: Vec<u8>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            buf: BytesMut::new(),
            inflate: Decompress::new(true),
            dict: dictionary(),
        }
    }
}

impl Decoder {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    fn inflate_block(&mut self, block: &[u8]) -> Result<Headers, SpdyError> {
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            out.reserve(4096);
            let before_in = self.inflate.total_in();
            let r = self
                .inflate
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            let used = (self.inflate.total_in() - before_in) as usize;
            input = &input[used..];
            match r {
                Ok(Status::BufError) if input.is_empty() => break,
                Ok(_) if input.is_empty() && out.len() < out.capacity() => break,
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(&self.dict)
                        .map_err(|e| SpdyError::Compression(e.to_string()))?;
                }
                Err(e) => return Err(SpdyError::Compression(e.to_string())),
            }
        }
        parse_headers(&out)
    }

    /// The next complete frame, `None` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, SpdyError> {
        if self.buf.len() < 8 {
            return Ok(None);
        }
        let len = (u32::from_be_bytes([0, self.buf[5], self.buf[6], self.buf[7]])) as usize;
        if len > MAX_FRAME {
            return Err(SpdyError::Malformed("oversized"));
        }
        if self.buf.len() < 8 + len {
            return Ok(None);
        }
        let mut head = self.buf.split_to(8);
        let payload = self.buf.split_to(len).freeze();
        let first = head.get_u32();
        let flags = head.get_u8();
        if first & 0x8000_0000 == 0 {
            return Ok(Some(Frame::Data {
                stream_id: first & 0x7fff_ffff,
                fin: flags & FLAG_FIN != 0,
                data: payload,
            }));
        }
        let version = ((first >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(SpdyError::Version(version));
        }
        let kind = (first & 0xffff) as u16;
        let fin = flags & FLAG_FIN != 0;
        let mut p = payload.clone();
        let need = |p: &Bytes, n: usize, what| {
            if p.len() < n {
                Err(SpdyError::Malformed(what))
            } else {
                Ok(())
            }
        };
        Ok(Some(match kind {
            SYN_STREAM => {
                need(&p, 10, "SYN_STREAM")?;
                let stream_id = p.get_u32() & 0x7fff_ffff;
                let associated = p.get_u32() & 0x7fff_ffff;
                p.advance(2);
                let headers = self.inflate_block(&p)?;
                Frame::SynStream {
                    stream_id,
                    associated,
                    fin,
                    headers,
                }
            }
            SYN_REPLY | HEADERS => {
                need(&p, 4, "SYN_REPLY")?;
                let stream_id = p.get_u32() & 0x7fff_ffff;
                let headers = self.inflate_block(&p)?;
                if kind == SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        fin,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        fin,
                        headers,
                    }
                }
            }
            RST_STREAM => {
                need(&p, 8, "RST_STREAM")?;
                Frame::RstStream {
                    stream_id: p.get_u32() & 0x7fff_ffff,
                    status: p.get_u32(),
                }
            }
            SETTINGS => Frame::Settings,
            PING => {
                need(&p, 4, "PING")?;
                Frame::Ping { id: p.get_u32() }
            }
            GOAWAY => {
                need(&p, 4, "GOAWAY")?;
                let last_good = p.get_u32() & 0x7fff_ffff;
                let status = if p.len() >= 4 { p.get_u32() } else { 0 };
                Frame::GoAway { last_good, status }
            }
            WINDOW_UPDATE => {
                need(&p, 8, "WINDOW_UPDATE")?;
                Frame::WindowUpdate {
                    stream_id: p.get_u32() & 0x7fff_ffff,
                    delta: p.get_u32() & 0x7fff_ffff,
                }
            }
            kind => Frame::Unknown { kind },
        }))
    }
}

fn parse_headers(raw: &[u8]) -> Result<Headers, SpdyError> {
    let bad = || SpdyError::Malformed("header block");
    let mut p = raw;
    let take_u32 = |p: &mut &[u8]| -> Result<usize, SpdyError> {
        if p.len() < 4 {
            return Err(bad());
        }
        let v = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
        *p = &p[4..];
        Ok(v)
    };
    let take = |p: &mut &[u8], n: usize| -> Result<String, SpdyError> {
        if p.len() < n {
            return Err(bad());
        }
        let s = String::from_utf8_lossy(&p[..n]).into_owned();
        *p = &p[n..];
        Ok(s)
    };
    let n = take_u32(&mut p)?;
    let mut out = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let kl = take_u32(&mut p)?;
        let k = take(&mut p, kl)?;
        let vl = take_u32(&mut p)?;
        let v = take(&mut p, vl)?;
        out.push((k.to_ascii_lowercase(), v));
    }
    Ok(out)
}

/// Encodes frames (owns the outgoing compression context: encode in send order).
pub struct Encoder {
    deflate: Compress,
}

impl Default for Encoder {
    fn default() -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        // A fresh context always accepts a dictionary.
        let _ = deflate.set_dictionary(&dictionary());
        Encoder { deflate }
    }
}

impl Encoder {
    fn deflate_block(&mut self, h: &Headers) -> Result<Vec<u8>, SpdyError> {
        let mut raw = Vec::new();
        raw.put_u32(h.len() as u32);
        for (k, v) in h {
            raw.put_u32(k.len() as u32);
            raw.extend_from_slice(k.as_bytes());
            raw.put_u32(v.len() as u32);
            raw.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = &raw[..];
        loop {
            out.reserve(256);
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| SpdyError::Compression(e.to_string()))?;
            input = &input[(self.deflate.total_in() - before) as usize..];
            // Done once all input is in and the flush fitted in the room we gave.
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }

    fn control(kind: u16, flags: u8, payload: &[u8], out: &mut Vec<u8>) {
        out.put_u32(0x8000_0000 | (u32::from(VERSION) << 16) | u32::from(kind));
        out.put_u32((u32::from(flags) << 24) | payload.len() as u32);
        out.extend_from_slice(payload);
    }

    pub fn encode(&mut self, f: &Frame, out: &mut Vec<u8>) -> Result<(), SpdyError> {
        let fin = |b: bool| if b { FLAG_FIN } else { 0 };
        match f {
            Frame::Data {
                stream_id,
                fin: f,
                data,
            } => {
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u32((u32::from(fin(*f)) << 24) | data.len() as u32);
                out.extend_from_slice(data);
            }
            Frame::SynStream {
                stream_id,
                associated,
                fin: f,
                headers,
            } => {
                let mut p = Vec::new();
                p.put_u32(*stream_id);
                p.put_u32(*associated);
                p.put_u16(0);
                p.extend(self.deflate_block(headers)?);
                Self::control(SYN_STREAM, fin(*f), &p, out);
            }
            Frame::SynReply {
                stream_id,
                fin: f,
                headers,
            } => {
                let mut p = Vec::new();
                p.put_u32(*stream_id);
                p.extend(self.deflate_block(headers)?);
                Self::control(SYN_REPLY, fin(*f), &p, out);
            }
            Frame::Headers {
                stream_id,
                fin: f,
                headers,
            } => {
                let mut p = Vec::new();
                p.put_u32(*stream_id);
                p.extend(self.deflate_block(headers)?);
                Self::control(HEADERS, fin(*f), &p, out);
            }
            Frame::RstStream { stream_id, status } => {
                let mut p = Vec::new();
                p.put_u32(*stream_id);
                p.put_u32(*status);
                Self::control(RST_STREAM, 0, &p, out);
            }
            Frame::Settings => Self::control(SETTINGS, 0, &0u32.to_be_bytes(), out),
            Frame::Ping { id } => Self::control(PING, 0, &id.to_be_bytes(), out),
            Frame::GoAway { last_good, status } => {
                let mut p = Vec::new();
                p.put_u32(*last_good);
                p.put_u32(*status);
                Self::control(GOAWAY, 0, &p, out);
            }
            Frame::WindowUpdate { stream_id, delta } => {
                let mut p = Vec::new();
                p.put_u32(*stream_id);
                p.put_u32(*delta);
                Self::control(WINDOW_UPDATE, 0, &p, out);
            }
            Frame::Unknown { .. } => {}
        }
        Ok(())
    }
}

/// Opens a connection to a port of the pod, or says why it cannot (the text goes to
/// the client on the request's error stream).
pub type Dial = std::sync::Arc<
    dyn Fn(u16) -> futures::future::BoxFuture<'static, Result<PodConn, String>> + Send + Sync,
>;

/// A connection to a pod's port: a TCP connection to the pod's address, or a stream
/// through a runtime's port-forward.
pub type PodConn = Box<dyn PodIo>;

pub trait PodIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> PodIo for T {}

/// Largest data frame sent.
const CHUNK: usize = 32 * 1024;

/// The session's writer: frames sent on the returned channel are encoded (one header
/// compression context for the session) and written in order; the write half is shut
/// down once every sender is gone.
pub fn spawn_writer<W>(mut wr: W) -> (mpsc::Sender<Frame>, tokio::task::JoinHandle<()>)
where
    W: AsyncWrite + Send + Unpin + 'static,
{
    let (out, mut out_rx) = mpsc::channel::<Frame>(64);
    let writer = tokio::spawn(async move {
        let mut enc = Encoder::default();
        let mut buf = Vec::new();
        while let Some(f) = out_rx.recv().await {
            buf.clear();
            if enc.encode(&f, &mut buf).is_err() {
                break;
            }
            // Coalesce what is queued into one write.
            while let Ok(f) = out_rx.try_recv() {
                if enc.encode(&f, &mut buf).is_err() {
                    break;
                }
            }
            if wr.write_all(&buf).await.is_err() || wr.flush().await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    (out, writer)
}

/// Serves kubectl's port-forward protocol (`portforward.k8s.io`) over a SPDY session
/// on `io`: each forwarded connection is an `error` stream and a `data` stream sharing
/// a `requestid`; the data stream is connected to the pod port it names. Returns when
/// the client ends the session.
pub async fn serve_port_forward<IO>(io: IO, dial: Dial)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, wr) = tokio::io::split(io);
    let (out, writer) = spawn_writer(wr);

    let mut dec = Decoder::default();
    // Data stream id → its inbound bytes (`None`: the client half-closed).
    let mut inbound: HashMap<u32, mpsc::Sender<Option<Bytes>>> = HashMap::new();
    let mut tasks: HashMap<u32, tokio::task::JoinHandle<()>> = HashMap::new();
    // requestid → error stream id.
    let mut errors: HashMap<String, u32> = HashMap::new();
    let mut buf = vec![0u8; 64 * 1024];
    'session: loop {
        loop {
            let frame = match dec.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "spdy: bad frame; ending the session");
                    break 'session;
                }
            };
            match frame {
                Frame::SynStream {
                    stream_id, headers, ..
                } => {
                    let _ = out
                        .send(Frame::SynReply {
                            stream_id,
                            fin: false,
                            headers: Vec::new(),
                        })
                        .await;
                    let request = header(&headers, "requestid").unwrap_or("").to_string();
                    match header(&headers, "streamtype") {
                        Some("error") => {
                            errors.insert(request, stream_id);
                        }
                        Some("data") => {
                            let err_stream = errors.remove(&request);
                            let port = header(&headers, "port").and_then(|p| p.parse::<u16>().ok());
                            let (tx, rx) = mpsc::channel(16);
                            inbound.insert(stream_id, tx);
                            let task = tokio::spawn(forward(
                                stream_id,
                                err_stream,
                                port,
                                dial.clone(),
                                rx,
                                out.clone(),
                            ));
                            tasks.insert(stream_id, task);
                        }
                        other => {
                            tracing::debug!(?other, "spdy: stream of unknown type; reset");
                            let _ = out
                                .send(Frame::RstStream {
                                    stream_id,
                                    status: CANCEL,
                                })
                                .await;
                        }
                    }
                }
                Frame::Data {
                    stream_id,
                    fin,
                    data,
                } => {
                    if !data.is_empty() {
                        let _ = out
                            .send(Frame::WindowUpdate {
                                stream_id,
                                delta: data.len() as u32,
                            })
                            .await;
                    }
                    if let Some(tx) = inbound.get(&stream_id) {
                        if !data.is_empty() {
                            let _ = tx.send(Some(data)).await;
                        }
                        if fin {
                            let _ = tx.send(None).await;
                            inbound.remove(&stream_id);
                        }
                    }
                }
                Frame::RstStream { stream_id, .. } => {
                    inbound.remove(&stream_id);
                    if let Some(t) = tasks.remove(&stream_id) {
                        t.abort();
                    }
                }
                Frame::Ping { id } => {
                    let _ = out.send(Frame::Ping { id }).await;
                }
                Frame::GoAway { .. } => break 'session,
                _ => {}
            }
        }
        tasks.retain(|_, t| !t.is_finished());
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => dec.push(&buf[..n]),
        }
    }
    for (_, t) in tasks {
        t.abort();
    }
    drop(out);
    let _ = writer.await;
}

/// One forwarded connection: dial the port, then copy both ways; the data stream is
/// half-closed when the pod side closes, and the error stream closed at the end (the
/// client waits for it).
async fn forward(
    stream_id: u32,
    err_stream: Option<u32>,
    port: Option<u16>,
    dial: Dial,
    mut rx: mpsc::Receiver<Option<Bytes>>,
    out: mpsc::Sender<Frame>,
) {
    let fin = |id: u32| Frame::Data {
        stream_id: id,
        fin: true,
        data: Bytes::new(),
    };
    let tcp = match port {
        Some(p) => dial(p).await,
        None => Err("invalid or missing port header".to_string()),
    };
    let tcp = match tcp {
        Ok(t) => t,
        Err(msg) => {
            if let Some(e) = err_stream {
                let _ = out
                    .send(Frame::Data {
                        stream_id: e,
                        fin: true,
                        data: Bytes::from(msg),
                    })
                    .await;
            }
            let _ = out.send(fin(stream_id)).await;
            return;
        }
    };
    let (mut r, mut w) = tokio::io::split(tcp);
    let up = async {
        while let Some(Some(b)) = rx.recv().await {
            if w.write_all(&b).await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let data = Bytes::copy_from_slice(&buf[..n]);
                    if out
                        .send(Frame::Data {
                            stream_id,
                            fin: false,
                            data,
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        let _ = out.send(fin(stream_id)).await;
    };
    tokio::join!(up, down);
    if let Some(e) = err_stream {
        let _ = out.send(fin(e)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdrs(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn dictionary_is_the_spdy3_one() {
        assert_eq!(dictionary().len(), 1423);
    }

    #[test]
    fn frames_round_trip_in_any_chunking_with_one_compression_context() {
        let frames = vec![
            Frame::SynStream {
                stream_id: 1,
                associated: 0,
                fin: false,
                headers: hdrs(&[("streamtype", "error"), ("port", "80"), ("requestid", "0")]),
            },
            Frame::Data {
                stream_id: 1,
                fin: true,
                data: Bytes::new(),
            },
            Frame::SynStream {
                stream_id: 3,
                associated: 0,
                fin: false,
                headers: hdrs(&[("streamtype", "data"), ("port", "80"), ("requestid", "0")]),
            },
            Frame::SynReply {
                stream_id: 3,
                fin: false,
                headers: Vec::new(),
            },
            Frame::Headers {
                stream_id: 3,
                fin: false,
                headers: hdrs(&[("x", "a\0b")]),
            },
            Frame::Data {
                stream_id: 3,
                fin: false,
                data: Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n"),
            },
            Frame::WindowUpdate {
                stream_id: 3,
                delta: 18,
            },
            Frame::Ping { id: 7 },
            Frame::RstStream {
                stream_id: 3,
                status: CANCEL,
            },
            Frame::Settings,
            Frame::GoAway {
                last_good: 3,
                status: 0,
            },
        ];
        let mut enc = Encoder::default();
        let mut wire = Vec::new();
        for f in &frames {
            enc.encode(f, &mut wire).unwrap();
        }
        for chunk in [1usize, 2, 4, 7, 1000] {
            let mut dec = Decoder::default();
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                dec.push(piece);
                dec.push(&[]);
                while let Some(f) = dec.next_frame().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, frames, "chunks of {chunk}");
        }
    }

    #[test]
    fn known_wire_bytes() {
        // A PING and a zero-length data frame with FIN, byte for byte.
        let mut enc = Encoder::default();
        let mut wire = Vec::new();
        enc.encode(&Frame::Ping { id: 1 }, &mut wire).unwrap();
        assert_eq!(wire, [0x80, 0x03, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 1]);
        wire.clear();
        enc.encode(
            &Frame::Data {
                stream_id: 5,
                fin: true,
                data: Bytes::new(),
            },
            &mut wire,
        )
        .unwrap();
        assert_eq!(wire, [0, 0, 0, 5, 1, 0, 0, 0]);
        // An empty header block compressed with the dictionary, as kubectl sends it
        // (zlib header 78 bb + the dictionary's adler32).
        let mut d = Decoder::default();
        let mut syn = Vec::new();
        enc.encode(
            &Frame::SynReply {
                stream_id: 1,
                fin: false,
                headers: Vec::new(),
            },
            &mut syn,
        )
        .unwrap();
        assert_eq!(&syn[12..14], &[0x78, 0xbb]);
        d.push(&syn);
        assert!(matches!(
            d.next_frame().unwrap(),
            Some(Frame::SynReply { stream_id: 1, .. })
        ));
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let mut d = Decoder::default();
        d.push(&[0x80, 0x02, 0x00, 0x01, 0, 0, 0, 0]);
        assert_eq!(d.next_frame(), Err(SpdyError::Version(2)));
        let mut d = Decoder::default();
        d.push(&[0x80, 0x03, 0x00, 0x01, 0, 0, 0, 2, 0, 0]);
        assert_eq!(d.next_frame(), Err(SpdyError::Malformed("SYN_STREAM")));
        let mut d = Decoder::default();
        d.push(&[0x80, 0x03, 0x00, 0x02, 0, 0, 0, 6, 0, 0, 0, 1, 0xde, 0xad]);
        assert!(matches!(d.next_frame(), Err(SpdyError::Compression(_))));
    }

    #[tokio::test]
    async fn port_forward_session_relays_a_connection_and_reports_dial_errors() {
        let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_port = echo.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let mut b = [0u8; 5];
            s.read_exact(&mut b).await.unwrap();
            s.write_all(&b).await.unwrap();
        });
        let dial: Dial = std::sync::Arc::new(move |port| {
            Box::pin(async move {
                if port == 1 {
                    return Err("nothing listens on 1".to_string());
                }
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .map(|s| Box::new(s) as PodConn)
                    .map_err(|e| e.to_string())
            })
        });
        let (client, server) = tokio::io::duplex(1 << 16);
        tokio::spawn(serve_port_forward(server, dial));
        let (mut cr, mut cw) = tokio::io::split(client);
        let mut enc = Encoder::default();
        let mut send = Vec::new();
        let p = echo_port.to_string();
        for f in [
            Frame::SynStream {
                stream_id: 1,
                associated: 0,
                fin: false,
                headers: hdrs(&[("streamtype", "error"), ("port", &p), ("requestid", "0")]),
            },
            Frame::Data {
                stream_id: 1,
                fin: true,
                data: Bytes::new(),
            },
            Frame::SynStream {
                stream_id: 3,
                associated: 0,
                fin: false,
                headers: hdrs(&[("streamtype", "data"), ("port", &p), ("requestid", "0")]),
            },
            Frame::Data {
                stream_id: 3,
                fin: false,
                data: Bytes::from_static(b"hello"),
            },
            Frame::SynStream {
                stream_id: 5,
                associated: 0,
                fin: false,
                headers: hdrs(&[("streamtype", "error"), ("port", "1"), ("requestid", "1")]),
            },
            Frame::SynStream {
                stream_id: 7,
                associated: 0,
                fin: false,
                headers: hdrs(&[("streamtype", "data"), ("port", "1"), ("requestid", "1")]),
            },
        ] {
            enc.encode(&f, &mut send).unwrap();
        }
        cw.write_all(&send).await.unwrap();
        let mut dec = Decoder::default();
        let mut echoed = Vec::new();
        let mut error_text = Vec::new();
        let (mut data_fin, mut err_fin, mut replies) = (false, false, 0);
        let mut buf = [0u8; 4096];
        while !(data_fin && err_fin && replies == 4) {
            let n = tokio::time::timeout(std::time::Duration::from_secs(5), cr.read(&mut buf))
                .await
                .expect("session answers")
                .unwrap();
            assert!(n > 0, "session ended early");
            dec.push(&buf[..n]);
            while let Some(f) = dec.next_frame().unwrap() {
                match f {
                    Frame::SynReply { .. } => replies += 1,
                    Frame::Data {
                        stream_id: 3,
                        fin,
                        data,
                    } => {
                        echoed.extend_from_slice(&data);
                        data_fin |= fin;
                    }
                    Frame::Data {
                        stream_id: 5,
                        fin,
                        data,
                    } => {
                        error_text.extend_from_slice(&data);
                        err_fin |= fin;
                    }
                    _ => {}
                }
            }
        }
        assert_eq!(echoed, b"hello");
        assert_eq!(error_text, b"nothing listens on 1");
    }
}
