//! Container logs in the CRI format kubelets read and `kubectl logs` shows:
//! `TIMESTAMP STREAM TAG MESSAGE`, one line per output line, with `P` (partial) for
//! a line cut at the buffer limit and `F` (full) otherwise.
//!
//! Files rotate by size as the kubelet's container log manager does (`0.log` →
//! `0.log.1` → … up to a fixed count), so a chatty module cannot fill the node's disk.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use chrono::{SecondsFormat, Utc};

/// Longest line kept whole; longer ones are split into partial records.
const MAX_LINE: usize = 16 * 1024;

/// When a log file rotates and how many rotated files are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// Bytes after which the current file is rotated (kubelet's default: 10 MiB).
    pub max_bytes: u64,
    /// Rotated files kept besides the current one (kubelet keeps 5 files in all).
    pub max_files: usize,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            max_bytes: 10 * 1024 * 1024,
            max_files: 4,
        }
    }
}

/// Asks a running container's log to reopen its file at the next write (CRI
/// `ReopenContainerLog`: the kubelet renamed the file away). Clones share the flag.
#[derive(Debug, Clone, Default)]
pub struct LogReopen(Arc<std::sync::atomic::AtomicBool>);

impl LogReopen {
    pub fn request(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }

    fn take(&self) -> bool {
        self.0.swap(false, std::sync::atomic::Ordering::AcqRel)
    }
}

struct Shared {
    path: PathBuf,
    reopen: LogReopen,
    limits: LogLimits,
    file: File,
    written: u64,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Shared {
    fn append(&mut self, stream: Stream, tag: char, line: &[u8]) -> std::io::Result<()> {
        if self.reopen.take() {
            self.file.flush()?;
            self.reopen()?;
        }
        if self.written >= self.limits.max_bytes {
            self.rotate()?;
        }
        self.written += CriLog::record(&mut self.file, stream, tag, line)? as u64;
        Ok(())
    }

    /// `0.log.(n-1)` → `0.log.n`, …, `0.log` → `0.log.1`, then a fresh `0.log`.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        let name = |i: usize| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{i}"));
            PathBuf::from(p)
        };
        if self.limits.max_files == 0 {
            std::fs::remove_file(&self.path).ok();
        } else {
            std::fs::remove_file(name(self.limits.max_files)).ok();
            for i in (1..self.limits.max_files).rev() {
                std::fs::rename(name(i), name(i + 1)).ok();
            }
            std::fs::rename(&self.path, name(1))?;
        }
        self.reopen()
    }

    fn reopen(&mut self) -> std::io::Result<()> {
        self.file = open_append(&self.path)?;
        self.written = self.file.metadata()?.len();
        Ok(())
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
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
    /// Appends to the log file at `path` (created if missing), with default limits.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        Self::open_with(path, LogLimits::default())
    }

    /// Appends to the log file at `path`, rotating it at `limits`.
    pub fn open_with(path: &Path, limits: LogLimits) -> std::io::Result<Self> {
        Self::open_reopenable(path, limits, LogReopen::default())
    }

    /// As [`CriLog::open_with`], reopening the file whenever `reopen` is requested.
    pub fn open_reopenable(
        path: &Path,
        limits: LogLimits,
        reopen: LogReopen,
    ) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_append(path)?;
        let written = file.metadata()?.len();
        Ok(CriLog {
            shared: Arc::new(Mutex::new(Shared {
                path: path.to_path_buf(),
                reopen,
                limits,
                file,
                written,
                stdout: Vec::new(),
                stderr: Vec::new(),
            })),
        })
    }

    /// Reopens the file at its path (CRI `ReopenContainerLog`, after an outside rotation).
    pub fn reopen(&self) -> std::io::Result<()> {
        let mut s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        s.file.flush()?;
        s.reopen()
    }

    fn record(file: &mut File, stream: Stream, tag: char, line: &[u8]) -> std::io::Result<usize> {
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
        file.write_all(&rec)?;
        Ok(rec.len())
    }

    /// Writes output bytes of `stream`, emitting a record per complete line.
    pub fn write(&self, stream: Stream, bytes: &[u8]) -> std::io::Result<()> {
        let mut s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        let mut buf = std::mem::take(match stream {
            Stream::Stdout => &mut s.stdout,
            Stream::Stderr => &mut s.stderr,
        });
        buf.extend_from_slice(bytes);
        let mut start = 0;
        let mut result = Ok(());
        while result.is_ok() {
            let rest = &buf[start..];
            if let Some(nl) = rest.iter().position(|b| *b == b'\n') {
                result = s.append(stream, 'F', &rest[..nl]);
                start += nl + 1;
            } else if rest.len() >= MAX_LINE {
                result = s.append(stream, 'P', &rest[..MAX_LINE]);
                start += MAX_LINE;
            } else {
                break;
            }
        }
        buf.drain(..start);
        *match stream {
            Stream::Stdout => &mut s.stdout,
            Stream::Stderr => &mut s.stderr,
        } = buf;
        result
    }

    /// Flushes unterminated output as a final full line (at container exit).
    pub fn finish(&self) -> std::io::Result<()> {
        let mut s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        for stream in [Stream::Stdout, Stream::Stderr] {
            let line = std::mem::take(match stream {
                Stream::Stdout => &mut s.stdout,
                Stream::Stderr => &mut s.stderr,
            });
            if !line.is_empty() {
                s.append(stream, 'F', &line)?;
            }
        }
        s.file.flush()
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

    #[test]
    fn rotates_by_size_and_keeps_a_bounded_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let limits = LogLimits {
            max_bytes: 200,
            max_files: 2,
        };
        let log = CriLog::open_with(&path, limits).unwrap();
        for i in 0..40 {
            log.write(Stream::Stdout, format!("line {i}\n").as_bytes())
                .unwrap();
        }
        log.finish().unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, vec!["0.log", "0.log.1", "0.log.2"]);
        for n in &names {
            let len = std::fs::metadata(dir.path().join(n)).unwrap().len();
            assert!(len < 200 + 64, "{n} is {len} bytes");
        }
        let current = std::fs::read_to_string(&path).unwrap();
        assert!(current.trim_end().ends_with("line 39"), "{current}");
        let older = std::fs::read_to_string(dir.path().join("0.log.1")).unwrap();
        assert!(!older.contains("line 39"));
    }

    #[test]
    fn reopen_follows_an_outside_rename() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let log = CriLog::open(&path).unwrap();
        log.write(Stream::Stdout, b"before\n").unwrap();
        std::fs::rename(&path, dir.path().join("0.log.old")).unwrap();
        log.reopen().unwrap();
        log.write(Stream::Stdout, b"after\n").unwrap();
        let now = std::fs::read_to_string(&path).unwrap();
        assert!(now.contains("after") && !now.contains("before"));
    }
}
