//! Container logs in the CRI format kubelets read and `kubectl logs` shows:
//! `TIMESTAMP STREAM TAG MESSAGE`, one line per output line, with `P` (partial) for
//! a line cut at the buffer limit and `F` (full) otherwise.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use chrono::{SecondsFormat, Utc};

/// Longest line kept whole; longer ones are split into partial records.
const MAX_LINE: usize = 16 * 1024;

struct Shared {
    file: File,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// One container's log file, shared by its stdout and stderr.
#[derive(Clone)]
pub struct CriLog {
    shared: Arc<Mutex<Shared>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

impl CriLog {
    /// Appends to the log file at `path` (created if missing).
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(CriLog {
            shared: Arc::new(Mutex::new(Shared {
                file,
                stdout: Vec::new(),
                stderr: Vec::new(),
            })),
        })
    }

    fn record(file: &mut File, stream: Stream, tag: char, line: &[u8]) -> std::io::Result<()> {
        let ts = Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true);
        let mut rec = Vec::with_capacity(line.len() + 48);
        rec.extend_from_slice(ts.as_bytes());
        rec.push(b' ');
        rec.extend_from_slice(stream.name().as_bytes());
        rec.push(b' ');
        rec.push(tag as u8);
        rec.push(b' ');
        rec.extend_from_slice(line);
        rec.push(b'\n');
        file.write_all(&rec)
    }

    /// Writes output bytes of `stream`, emitting a record per complete line.
    pub fn write(&self, stream: Stream, bytes: &[u8]) -> std::io::Result<()> {
        let mut s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        let Shared {
            file,
            stdout,
            stderr,
        } = &mut *s;
        let buf = match stream {
            Stream::Stdout => stdout,
            Stream::Stderr => stderr,
        };
        buf.extend_from_slice(bytes);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            Self::record(file, stream, 'F', &line[..line.len() - 1])?;
        }
        while buf.len() >= MAX_LINE {
            let part: Vec<u8> = buf.drain(..MAX_LINE).collect();
            Self::record(file, stream, 'P', &part)?;
        }
        Ok(())
    }

    /// Flushes unterminated output as a final full line (at container exit).
    pub fn finish(&self) -> std::io::Result<()> {
        let mut s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        let Shared {
            file,
            stdout,
            stderr,
        } = &mut *s;
        for (stream, buf) in [(Stream::Stdout, stdout), (Stream::Stderr, stderr)] {
            if !buf.is_empty() {
                let line = std::mem::take(buf);
                Self::record(file, stream, 'F', &line)?;
            }
        }
        file.flush()
    }

    /// A WASI output stream writing into this log.
    pub fn stream(&self, stream: Stream) -> LogStream {
        LogStream {
            log: self.clone(),
            stream,
        }
    }
}

/// stdout or stderr of a container, as WASI sees it.
#[derive(Clone)]
pub struct LogStream {
    log: CriLog,
    stream: Stream,
}

impl wasmtime_wasi::cli::IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for LogStream {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for LogStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        // Small appends to a local file: done inline rather than on a blocking pool.
        Poll::Ready(self.log.write(self.stream, buf).map(|_| buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c/0.log");
        let log = CriLog::open(&path).unwrap();
        log.write(Stream::Stdout, b"hello\nwor").unwrap();
        log.write(Stream::Stderr, b"oops\n").unwrap();
        log.write(Stream::Stdout, b"ld\ntail").unwrap();
        log.finish().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Vec<&str>> = text.lines().map(|l| l.splitn(4, ' ').collect()).collect();
        let got: Vec<(&str, &str, &str)> = lines.iter().map(|l| (l[1], l[2], l[3])).collect();
        assert_eq!(
            got,
            vec![
                ("stdout", "F", "hello"),
                ("stderr", "F", "oops"),
                ("stdout", "F", "world"),
                ("stdout", "F", "tail")
            ]
        );
        assert!(chrono::DateTime::parse_from_rfc3339(lines[0][0]).is_ok());
    }
}
