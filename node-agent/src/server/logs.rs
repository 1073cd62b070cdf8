//! `/containerLogs`: reads the CRI log file a runtime writes for a container
//! (`TIMESTAMP STREAM TAG MESSAGE` records, `P` for a partial line, `F` for a full
//! one) and renders it as `kubectl logs` shows it, with upstream's options
//! (`tailLines`, `sinceSeconds`/`sinceTime`, `timestamps`, `limitBytes`, `follow`).
//!
//! As upstream's kubelet, only the container's current file is read; `follow` keeps
//! reading as the file grows and across rotation (the runtime renames `0.log` to
//! `0.log.1` and starts a new `0.log`: the old handle is drained, then the new file
//! is read from its start). Growth is found by polling the file every
//! [`FOLLOW_POLL`] (upstream waits on inotify); following ends when the container is
//! no longer running and everything it wrote has been sent.

use std::collections::HashMap;
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use tokio::sync::mpsc;

/// How often a followed log file is checked for new records.
pub const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// How often a followed container is asked whether it still runs.
const RUNNING_CHECK: Duration = Duration::from_secs(1);

/// What a log request asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogOptions {
    pub follow: bool,
    pub tail_lines: Option<usize>,
    pub since: Option<DateTime<Utc>>,
    pub timestamps: bool,
    pub limit_bytes: Option<u64>,
}

fn flag(q: &HashMap<String, String>, k: &str) -> bool {
    q.get(k)
        .is_some_and(|v| matches!(v.as_str(), "1" | "t" | "T" | "true" | "TRUE" | "True"))
}

impl LogOptions {
    /// From the query of `/containerLogs` (the names of `PodLogOptions`); `now` for
    /// `sinceSeconds`. Bad values are errors with upstream's wording.
    pub fn from_query(q: &HashMap<String, String>, now: DateTime<Utc>) -> Result<Self, String> {
        let num = |k: &str| -> Result<Option<i64>, String> {
            q.get(k)
                .filter(|v| !v.is_empty())
                .map(|v| {
                    v.parse::<i64>()
                        .map_err(|_| format!("{k}: invalid value {v:?}"))
                })
                .transpose()
        };
        let mut o = LogOptions {
            follow: flag(q, "follow"),
            timestamps: flag(q, "timestamps"),
            ..Default::default()
        };
        if let Some(n) = num("tailLines")? {
            if n < 0 {
                return Err("tailLines: must be greater than or equal to 0".into());
            }
            o.tail_lines = Some(n as usize);
        }
        if let Some(n) = num("limitBytes")? {
            if n < 1 {
                return Err("limitBytes: must be greater than 0".into());
            }
            o.limit_bytes = Some(n as u64);
        }
        if let Some(s) = num("sinceSeconds")? {
            if s < 1 {
                return Err("sinceSeconds: must be greater than 0".into());
            }
            o.since = Some(now - chrono::Duration::seconds(s));
        }
        if let Some(t) = q.get("sinceTime").filter(|v| !v.is_empty()) {
            if o.since.is_some() {
                return Err("at most one of sinceTime or sinceSeconds may be specified".into());
            }
            let t = DateTime::parse_from_rfc3339(t)
                .map_err(|_| format!("sinceTime: invalid value {t:?}"))?;
            o.since = Some(t.with_timezone(&Utc));
        }
        Ok(o)
    }
}

/// One CRI log record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record<'a> {
    pub time: DateTime<Utc>,
    pub stream: &'a [u8],
    pub partial: bool,
    pub message: &'a [u8],
}

/// Parses one record (the line without its `\n`); `None` for a malformed line.
pub fn parse_record(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let ts = std::str::from_utf8(parts.next()?).ok()?;
    let stream = parts.next()?;
    let tag = parts.next()?;
    let message = parts.next().unwrap_or_default();
    let time = DateTime::parse_from_rfc3339(ts).ok()?.with_timezone(&Utc);
    Some(Record {
        time,
        stream,
        // Tags are `:`-separated; `P` marks a partial line.
        partial: tag.split(|b| *b == b':').any(|t| t == b"P"),
        message,
    })
}

/// Go's RFC3339Nano (`2006-01-02T15:04:05.999999999Z07:00`: trailing zeros of the
/// fraction dropped), the timestamp format of `kubectl logs --timestamps`.
pub fn rfc3339_nano(t: &DateTime<Utc>) -> String {
    let s = t.to_rfc3339_opts(SecondsFormat::Nanos, true);
    match s.split_once('.') {
        Some((head, frac)) => {
            let digits = frac.trim_end_matches('Z').trim_end_matches('0');
            if digits.is_empty() {
                format!("{head}Z")
            } else {
                format!("{head}.{digits}Z")
            }
        }
        None => s,
    }
}

/// Renders records into what the client reads, keeping per-stream state (whether
/// the last record of a stream was partial: its continuation gets no timestamp) and
/// the byte budget.
pub struct Renderer {
    opts: LogOptions,
    partial: HashMap<Vec<u8>, bool>,
    written: u64,
}

impl Renderer {
    pub fn new(opts: LogOptions) -> Self {
        Renderer {
            opts,
            partial: HashMap::new(),
            written: 0,
        }
    }

    /// The byte limit is reached: nothing more will be rendered.
    pub fn exhausted(&self) -> bool {
        self.opts.limit_bytes.is_some_and(|l| self.written >= l)
    }

    /// Appends the rendering of the complete lines in `lines` to `out`.
    pub fn render(&mut self, lines: &[u8], out: &mut Vec<u8>) {
        for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            if self.exhausted() {
                return;
            }
            let Some(rec) = parse_record(line) else {
                continue;
            };
            if self.opts.since.is_some_and(|s| rec.time < s) {
                continue;
            }
            let continues = self.partial.get(rec.stream).copied().unwrap_or(false);
            self.partial.insert(rec.stream.to_vec(), rec.partial);
            let start = out.len();
            if self.opts.timestamps && !continues {
                out.extend_from_slice(rfc3339_nano(&rec.time).as_bytes());
                out.push(b' ');
            }
            out.extend_from_slice(rec.message);
            if !rec.partial {
                out.push(b'\n');
            }
            let n = (out.len() - start) as u64;
            if let Some(limit) = self.opts.limit_bytes {
                let room = limit - self.written;
                if n > room {
                    out.truncate(start + room as usize);
                    self.written = limit;
                    return;
                }
            }
            self.written += n;
        }
    }
}

/// The offset in `data` where the last `n` complete lines start.
pub fn tail_start(data: &[u8], n: usize) -> usize {
    if n == 0 {
        return data.len();
    }
    // Skip a trailing newline, then find the n-th newline from the end.
    let mut end = data.len();
    if data.last() == Some(&b'\n') {
        end -= 1;
    }
    let mut seen = 0;
    for i in (0..end).rev() {
        if data[i] == b'\n' {
            seen += 1;
            if seen == n {
                return i + 1;
            }
        }
    }
    0
}

/// Whether the container still runs (asked while following).
pub type RunningCheck = Box<dyn Fn() -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// Streams the log at `path` as rendered chunks on the returned channel. The
/// reader stops when the receiver is dropped (the client went away).
pub fn stream(
    path: PathBuf,
    opts: LogOptions,
    running: RunningCheck,
) -> mpsc::Receiver<Result<Bytes, std::io::Error>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        if let Err(e) = follow(path, opts, running, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    rx
}

struct Cursor {
    file: std::fs::File,
    ino: u64,
    /// Bytes read past the last complete line.
    pending: Vec<u8>,
}

impl Cursor {
    fn open(path: &std::path::Path) -> std::io::Result<Cursor> {
        let file = std::fs::File::open(path)?;
        let ino = file.metadata()?.ino();
        Ok(Cursor {
            file,
            ino,
            pending: Vec::new(),
        })
    }

    /// Reads what was appended; returns the complete lines (with their `\n`s).
    fn read_lines(&mut self) -> std::io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.file.read_to_end(&mut buf)?;
        if buf.is_empty() {
            return Ok(Vec::new());
        }
        self.pending.extend_from_slice(&buf);
        let cut = self
            .pending
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        let rest = self.pending.split_off(cut);
        Ok(std::mem::replace(&mut self.pending, rest))
    }
}

async fn send(
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
    r: &mut Renderer,
    lines: &[u8],
) -> bool {
    let mut out = Vec::new();
    r.render(lines, &mut out);
    out.is_empty() || tx.send(Ok(Bytes::from(out))).await.is_ok()
}

async fn follow(
    path: PathBuf,
    opts: LogOptions,
    running: RunningCheck,
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> std::io::Result<()> {
    let follow = opts.follow;
    let tail = opts.tail_lines;
    let mut r = Renderer::new(opts);
    let mut cur = match Cursor::open(&path) {
        Ok(c) => c,
        // A container that never wrote has no file yet: nothing to show (or wait).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !follow => return Ok(()),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        Err(_) => loop {
            if tx.is_closed() || !running().await {
                return Ok(());
            }
            tokio::time::sleep(FOLLOW_POLL).await;
            if let Ok(c) = Cursor::open(&path) {
                break c;
            }
        },
    };
    let first = cur.read_lines()?;
    let start = tail.map_or(0, |n| tail_start(&first, n));
    if !send(tx, &mut r, &first[start..]).await || !follow || r.exhausted() {
        return Ok(());
    }
    let mut last_check = tokio::time::Instant::now();
    let mut still_running = true;
    loop {
        let lines = cur.read_lines()?;
        if !lines.is_empty() {
            if !send(tx, &mut r, &lines).await || r.exhausted() {
                return Ok(());
            }
            continue;
        }
        // Rotated: the path now names another file. The old one is drained (above),
        // so continue with the new one from its start.
        let rotated = std::fs::metadata(&path).is_ok_and(|m| m.ino() != cur.ino);
        if rotated {
            if let Ok(c) = Cursor::open(&path) {
                cur = c;
                continue;
            }
        }
        if !still_running {
            return Ok(());
        }
        if tx.is_closed() {
            return Ok(());
        }
        if last_check.elapsed() >= RUNNING_CHECK {
            last_check = tokio::time::Instant::now();
            // One more pass after the container ended picks up its last lines.
            still_running = running().await;
            continue;
        }
        tokio::time::sleep(FOLLOW_POLL).await;
        // Files truncated in place (copytruncate) restart from their beginning.
        if let Ok(m) = std::fs::metadata(&path) {
            if m.ino() == cur.ino && m.len() < cur.file.stream_position()? {
                cur.file.seek(SeekFrom::Start(0))?;
                cur.pending.clear();
            }
        }
    }
}

/// Attach: the container's output from the current end of its log on, each record
/// to the channel of its stream (a full line gets its newline back), until the
/// container has stopped running or both receivers are gone.
pub async fn attach(
    path: PathBuf,
    running: RunningCheck,
    stdout: Option<mpsc::Sender<Bytes>>,
    stderr: Option<mpsc::Sender<Bytes>>,
) {
    let Ok(mut cur) = Cursor::open(&path) else {
        return;
    };
    if cur.file.seek(SeekFrom::End(0)).is_err() {
        return;
    }
    let mut last_check = tokio::time::Instant::now();
    loop {
        let lines = cur.read_lines().unwrap_or_default();
        for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let Some(rec) = parse_record(line) else {
                continue;
            };
            let tx = if rec.stream == b"stderr" {
                &stderr
            } else {
                &stdout
            };
            if let Some(tx) = tx {
                let mut b = rec.message.to_vec();
                if !rec.partial {
                    b.push(b'\n');
                }
                let _ = tx.send(Bytes::from(b)).await;
            }
        }
        let gone = |t: &Option<mpsc::Sender<Bytes>>| t.as_ref().is_none_or(|t| t.is_closed());
        if gone(&stdout) && gone(&stderr) {
            return;
        }
        if std::fs::metadata(&path).is_ok_and(|m| m.ino() != cur.ino) {
            if let Ok(c) = Cursor::open(&path) {
                cur = c;
                continue;
            }
        }
        if last_check.elapsed() >= RUNNING_CHECK {
            last_check = tokio::time::Instant::now();
            if !running().await {
                return;
            }
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn rec(ts: &str, stream: &str, tag: &str, msg: &str) -> String {
        format!("{ts} {stream} {tag} {msg}\n")
    }

    fn opts(q: &[(&str, &str)]) -> LogOptions {
        let q: HashMap<String, String> = q
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        LogOptions::from_query(&q, "2026-01-01T00:10:00Z".parse().unwrap()).unwrap()
    }

    fn render(o: LogOptions, data: &str) -> String {
        let mut out = Vec::new();
        Renderer::new(o).render(data.as_bytes(), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn options_from_query() {
        let o = opts(&[
            ("follow", "true"),
            ("tailLines", "2"),
            ("sinceSeconds", "60"),
            ("timestamps", "1"),
        ]);
        assert!(o.follow && o.timestamps);
        assert_eq!(o.tail_lines, Some(2));
        assert_eq!(o.since, Some("2026-01-01T00:09:00Z".parse().unwrap()));
        let q = |k: &str, v: &str| {
            LogOptions::from_query(&[(k.to_string(), v.to_string())].into(), Utc::now())
        };
        assert!(q("tailLines", "-1").is_err());
        assert!(q("limitBytes", "0").is_err());
        assert!(q("sinceTime", "yesterday").is_err());
        assert_eq!(
            q("sinceTime", "2026-01-01T00:00:00+01:00").unwrap().since,
            Some("2025-12-31T23:00:00Z".parse().unwrap())
        );
    }

    #[test]
    fn renders_partial_lines_timestamps_since_and_limits() {
        let data = [
            rec("2026-01-01T00:00:00.500000000Z", "stdout", "F", "one"),
            rec("2026-01-01T00:00:01.000000000Z", "stderr", "P", "tw"),
            rec("2026-01-01T00:00:01.100000000Z", "stderr", "F", "o"),
            rec("2026-01-01T00:09:30.000000000Z", "stdout", "F", "three"),
            "garbage\n".to_string(),
        ]
        .concat();
        assert_eq!(render(LogOptions::default(), &data), "one\ntwo\nthree\n");
        assert_eq!(
            render(opts(&[("timestamps", "true")]), &data),
            "2026-01-01T00:00:00.5Z one\n2026-01-01T00:00:01Z two\n2026-01-01T00:09:30Z three\n"
        );
        assert_eq!(render(opts(&[("sinceSeconds", "60")]), &data), "three\n");
        assert_eq!(
            render(opts(&[("sinceTime", "2026-01-01T00:00:01Z")]), &data),
            "two\nthree\n"
        );
        assert_eq!(render(opts(&[("limitBytes", "6")]), &data), "one\ntw");
        assert_eq!(
            tail_start(data.as_bytes(), 2),
            data.find("2026-01-01T00:09:30").unwrap()
        );
        assert_eq!(tail_start(b"a\nb\n", 5), 0);
        assert_eq!(tail_start(b"a\nb\n", 0), 4);
    }

    #[tokio::test]
    async fn follows_growth_and_rotation_until_the_container_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut f = std::fs::File::create(&path).unwrap();
        for i in 0..3 {
            f.write_all(rec("2026-01-01T00:00:00Z", "stdout", "F", &format!("l{i}")).as_bytes())
                .unwrap();
        }
        let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let r2 = running.clone();
        let check: RunningCheck = Box::new(move || {
            let r = r2.clone();
            Box::pin(async move { r.load(std::sync::atomic::Ordering::SeqCst) })
        });
        let mut rx = stream(
            path.clone(),
            opts(&[("follow", "true"), ("tailLines", "1")]),
            check,
        );
        let mut got = String::new();
        let mut next = async || {
            let b = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("a chunk in time");
            b.map(|b| String::from_utf8(b.unwrap().to_vec()).unwrap())
        };
        got.push_str(&next().await.unwrap());
        assert_eq!(got, "l2\n");
        f.write_all(rec("2026-01-01T00:00:01Z", "stdout", "F", "l3").as_bytes())
            .unwrap();
        assert_eq!(next().await.unwrap(), "l3\n");
        // Rotation: a last line into the old file, rename, new file.
        f.write_all(rec("2026-01-01T00:00:02Z", "stdout", "F", "l4").as_bytes())
            .unwrap();
        std::fs::rename(&path, dir.path().join("0.log.1")).unwrap();
        let mut g = std::fs::File::create(&path).unwrap();
        g.write_all(rec("2026-01-01T00:00:03Z", "stdout", "F", "l5").as_bytes())
            .unwrap();
        let mut rest = String::new();
        while !rest.contains("l5") {
            rest.push_str(&next().await.unwrap());
        }
        assert_eq!(rest, "l4\nl5\n");
        running.store(false, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            next().await,
            None,
            "the stream ends once the container ended"
        );
    }
}
