//! In-kernel forwarding for proxied TCP connections (a BPF sockmap): once a
//! connection's two sockets are paired, every segment one of them receives is sent on
//! the other by the kernel (the verdict program in the receiving softirq, the send in
//! a workqueue item on that CPU), without waking the proxy. A hop through a userspace
//! proxy otherwise costs two thread wake-ups per exchange, and on a VM whose idle
//! vCPUs halt each of those costs tens of microseconds or more: with the host busy, a
//! lone request through the proxy took 39–41 µs here against 329–660 µs in user
//! space. Under CPU contention the per-segment work item waits for a CPU (0.57–0.77×
//! HAProxy's requests/s against ~1.0× in user space), so connections are only paired
//! while the CPUs are not contended ([`watch_cpu_pressure`]). Opt-in
//! (`--proxy-kernel-connections`).
//!
//! The proxy still owns the connection: it pairs the sockets, watches them for end
//! of stream and errors, passes a FIN on once the kernel has sent everything before
//! it (the kernel forwards bytes, not FINs), and closes both at the end, which takes
//! them out of the maps.
//!
//! Two socket hashes keyed by socket cookie: `peers` maps a socket to the one its
//! bytes go to, `verdict` holds the sockets whose received bytes the program
//! redirects. A connection enters `peers` first and `verdict` second, so the program
//! never runs on a socket whose peer is missing (it would drop the bytes).
//!
//! Needs CAP_BPF and CAP_NET_ADMIN (root) and a kernel with sockmap
//! (CONFIG_BPF_STREAM_PARSER); without them the proxy forwards in user space.

// The bpf(2) system call, TCP_INFO, SIOCOUTQ and SO_RCVLOWAT have no safe wrapper in rustix; each
// unsafe block below is one system call on a buffer it sizes itself.
#![allow(unsafe_code)]

use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;

const BPF_MAP_TYPE_SOCKHASH: u32 = 18;
const BPF_PROG_TYPE_SK_SKB: u32 = 14;
const BPF_SK_SKB_STREAM_VERDICT: u32 = 5;
const BPF_NOEXIST: u64 = 1;

const HELPER_GET_SOCKET_COOKIE: i32 = 46;
const HELPER_SK_REDIRECT_HASH: i32 = 72;

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a properly sized, zero-padded bpf_attr variant for `cmd`.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>() as u32) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: a file descriptor the bpf syscall just returned, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

fn name(s: &str) -> [u8; 16] {
    let mut n = [0u8; 16];
    n[..s.len().min(15)].copy_from_slice(&s.as_bytes()[..s.len().min(15)]);
    n
}

/// One eBPF instruction.
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

/// The verdict program: redirect the segment to the socket `peers` holds under
/// this socket's cookie (SK_DROP when there is none: the peer has closed).
fn program(peers_fd: i32) -> [Insn; 11] {
    const MOV64_REG: u8 = 0xbf;
    const MOV64_IMM: u8 = 0xb7;
    const ADD64_IMM: u8 = 0x07;
    const STX_DW: u8 = 0x7b;
    const LD_IMM64: u8 = 0x18;
    const CALL: u8 = 0x85;
    const EXIT: u8 = 0x95;
    const PSEUDO_MAP_FD: u8 = 1;
    [
        insn(MOV64_REG, 6, 1, 0, 0),                   // r6 = skb
        insn(CALL, 0, 0, 0, HELPER_GET_SOCKET_COOKIE), // r0 = cookie(skb->sk)
        insn(STX_DW, 10, 0, -8, 0),                    // *(u64 *)(fp - 8) = r0
        insn(MOV64_REG, 1, 6, 0, 0),                   // r1 = skb
        insn(LD_IMM64, 2, PSEUDO_MAP_FD, 0, peers_fd), // r2 = &peers
        insn(0, 0, 0, 0, 0),                           //   (upper half)
        insn(MOV64_REG, 3, 10, 0, 0),                  // r3 = fp
        insn(ADD64_IMM, 3, 0, 0, -8),                  // r3 = fp - 8 (the key)
        insn(MOV64_IMM, 4, 0, 0, 0),                   // r4 = 0 (egress)
        insn(CALL, 0, 0, 0, HELPER_SK_REDIRECT_HASH),  // r0 = SK_PASS or SK_DROP
        insn(EXIT, 0, 0, 0, 0),
    ]
}

/// The maps and the program; one per proxy, shared by its data-plane threads.
pub struct Sockmap {
    peers: OwnedFd,
    verdict: OwnedFd,
    _program: OwnedFd,
    /// Connections paired so far.
    pub paired: AtomicU64,
    /// Directions that moved to user space (a bulk stream, or CPU contention).
    pub to_user_space: AtomicU64,
    /// The CPUs are contended (see [`watch_cpu_pressure`]): new connections stay in
    /// user space and paired ones move there.
    pub contended: AtomicBool,
}

impl Sockmap {
    /// Loads the program and makes the maps, for up to `connections` connections
    /// at once (beyond that, connections are forwarded in user space).
    pub fn load(connections: u32) -> io::Result<Sockmap> {
        let map = |what: &str| -> io::Result<OwnedFd> {
            let mut attr = MapCreateAttr {
                map_type: BPF_MAP_TYPE_SOCKHASH,
                key_size: 8,
                value_size: 8,
                max_entries: connections.saturating_mul(2).max(2),
                map_name: name(what),
                ..Default::default()
            };
            bpf(BPF_MAP_CREATE, &mut attr).map(owned)
        };
        let peers = map("kelp_peers")?;
        let verdict = map("kelp_verdict")?;
        let insns = program(peers.as_raw_fd());
        let license = c"Apache-2.0";
        let mut log = vec![0u8; 4096];
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_SK_SKB,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 1,
            log_size: log.len() as u32,
            log_buf: log.as_mut_ptr() as u64,
            prog_name: name("kelp_redirect"),
            ..Default::default()
        };
        let program = bpf(BPF_PROG_LOAD, &mut attr).map(owned).map_err(|e| {
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let log = String::from_utf8_lossy(&log[..end]);
            io::Error::new(e.kind(), format!("{e}: {}", log.trim()))
        })?;
        let mut attr = ProgAttachAttr {
            target_fd: verdict.as_raw_fd() as u32,
            attach_bpf_fd: program.as_raw_fd() as u32,
            attach_type: BPF_SK_SKB_STREAM_VERDICT,
            ..Default::default()
        };
        bpf(BPF_PROG_ATTACH, &mut attr)?;
        Ok(Sockmap {
            peers,
            verdict,
            _program: program,
            paired: AtomicU64::new(0),
            to_user_space: AtomicU64::new(0),
            contended: AtomicBool::new(false),
        })
    }

    fn insert(map: &OwnedFd, key: u64, socket: impl AsFd) -> io::Result<()> {
        let fd = socket.as_fd().as_raw_fd() as u64;
        let mut attr = MapElemAttr {
            map_fd: map.as_raw_fd() as u32,
            key: &key as *const u64 as u64,
            value: &fd as *const u64 as u64,
            flags: BPF_NOEXIST,
            ..Default::default()
        };
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
    }

    fn remove(map: &OwnedFd, key: u64) -> io::Result<()> {
        let mut attr = MapElemAttr {
            map_fd: map.as_raw_fd() as u32,
            key: &key as *const u64 as u64,
            ..Default::default()
        };
        bpf(BPF_MAP_DELETE_ELEM, &mut attr).map(drop)
    }

    /// Stops the kernel taking what `socket` receives; later bytes wait in its own
    /// queue, behind everything the kernel already took.
    fn unpair_receiver(&self, socket: &TcpStream) -> io::Result<()> {
        Self::remove(&self.verdict, rustix::net::sockopt::socket_cookie(socket)?)
    }

    /// Pairs `a` and `b`: from here on the kernel sends what either receives on the
    /// other, including bytes that arrived before. On an error nothing is left in
    /// the maps and the caller forwards in user space (a socket that has already
    /// received its peer's FIN cannot enter a sockmap, for one). Else which of `a`
    /// and `b` the kernel reads.
    fn pair(&self, a: &TcpStream, b: &TcpStream) -> io::Result<(bool, bool)> {
        let ka = rustix::net::sockopt::socket_cookie(a)?;
        let kb = rustix::net::sockopt::socket_cookie(b)?;
        let steps: [(&OwnedFd, u64, &TcpStream); 4] = [
            (&self.peers, ka, b),
            (&self.peers, kb, a),
            (&self.verdict, ka, a),
            (&self.verdict, kb, b),
        ];
        for (i, (map, key, socket)) in steps.iter().enumerate() {
            match Self::insert(map, *key, *socket) {
                Ok(()) => {}
                // `a` already redirects: what the kernel took from it may still be
                // queued toward `b` (undoing would drop it). `b`, which just received
                // its peer's FIN, is forwarded from user space.
                Err(_) if i == 3 => {
                    kick_pending(a);
                    self.paired.fetch_add(1, Ordering::Relaxed);
                    return Ok((true, false));
                }
                // Nothing redirects yet: nothing is queued anywhere.
                Err(e) => {
                    for (map, key, _) in steps[..i].iter().rev() {
                        let _ = Self::remove(map, *key);
                    }
                    return Err(e);
                }
            }
        }
        kick_pending(a);
        kick_pending(b);
        self.paired.fetch_add(1, Ordering::Relaxed);
        Ok((true, true))
    }
}

/// Bytes that arrived before a socket entered the verdict map wait in its receive
/// queue until something calls its data-ready hook; setting SO_RCVLOWAT does
/// (tcp_set_rcvlowat → tcp_data_ready), and the program sends them on in order ahead
/// of anything later. (It cannot fail on a TCP socket; should it, those bytes go
/// with the next segment.)
fn kick_pending(s: &TcpStream) {
    if let Err(e) = kick(s) {
        tracing::warn!(error = %e, "cannot hand a paired socket's early bytes to the kernel");
    }
}

fn kick(s: &TcpStream) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: a valid socket and a c_int option value of the right size.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            &one as *const libc::c_int as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A socket's byte counters: everything it has received and handed on (a FIN counts
/// one), and everything written to it (acknowledged or still queued).
#[derive(Clone, Copy)]
struct Counters {
    received: u64,
    written: u64,
    /// The connection is closed (reset, or both sides done): nothing more moves.
    closed: bool,
}

fn tcp_info(s: &TcpStream) -> io::Result<libc::tcp_info> {
    // SAFETY: tcp_info is plain old data; the kernel fills at most `len` bytes.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a valid socket and a buffer of `len` bytes.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            &mut info as *mut libc::tcp_info as *mut libc::c_void,
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info)
}

/// SIOCOUTQ: bytes written to `s` and not yet acknowledged (rustix has no wrapper).
fn unacked_bytes(s: &TcpStream) -> io::Result<u64> {
    let mut value: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one c_int.
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut value) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value.max(0) as u64)
}

fn counters(s: &TcpStream) -> io::Result<Counters> {
    let info = tcp_info(s)?;
    // Read after TCP_INFO: an ACK between the two calls only makes the sum smaller.
    let queued = unacked_bytes(s)?;
    // Bytes received but still in the socket's own queue (before the pairing, or
    // after leaving the verdict map) are not handed on yet.
    let unread = rustix::io::ioctl_fionread(s)?;
    Ok(Counters {
        received: info.tcpi_bytes_received - unread,
        written: info.tcpi_bytes_acked + queued,
        closed: info.tcpi_state == TCP_CLOSE,
    })
}

/// Forwards between `a` and `b` until both directions have ended: (bytes a → b,
/// bytes b → a). Each direction starts in the kernel; one that turns into a bulk
/// stream moves to user space (see `one_way`). `Err(NotPaired)` means nothing
/// moved and the caller forwards in user space.
pub async fn forward(
    map: &Sockmap,
    a: &mut TcpStream,
    b: &mut TcpStream,
    local_congestion: Option<&str>,
    paired: &AtomicU64,
) -> Result<(u64, u64), ForwardError> {
    if map.contended.load(Ordering::Relaxed) {
        return Err(ForwardError::Declined);
    }
    let (a0, b0) = match (counters(a), counters(b)) {
        (Ok(a0), Ok(b0)) => (a0, b0),
        (Err(e), _) | (_, Err(e)) => return Err(ForwardError::NotPaired(e)),
    };
    let (a_kernel, b_kernel) = map.pair(a, b).map_err(ForwardError::NotPaired)?;
    paired.fetch_add(1, Ordering::Relaxed);
    let (mut a_read, mut a_write) = a.split();
    let (mut b_read, mut b_write) = b.split();
    let moved = tokio::try_join!(
        one_way(
            map,
            (&mut a_read, a0, a_kernel),
            (&mut b_write, b0),
            local_congestion
        ),
        one_way(
            map,
            (&mut b_read, b0, b_kernel),
            (&mut a_write, a0),
            local_congestion
        )
    );
    moved.map_err(ForwardError::Io)
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("the sockets cannot be paired in the kernel: {0}")]
    NotPaired(io::Error),
    /// The CPUs are contended: the connection is better off in user space.
    #[error("the CPUs are contended")]
    Declined,
    #[error(transparent)]
    Io(io::Error),
}

/// One direction: the kernel moves `from`'s bytes to `to` until `from` ends, or
/// until it turns into a bulk stream (which splice moves faster than the sockmap's
/// per-segment sends: 29–67% of a direct stream against 91–125%, same run), or the
/// CPUs become contended (the per-segment work items then wait for a CPU: 0.57–0.77×
/// HAProxy's requests/s against ~1.0× in user space). Then `from` leaves the verdict
/// map, and once `to` has been handed every byte the kernel took, the direction goes
/// on as the user-space path forwards ([`super::splice::forward_to_end`]). Ends by
/// shutting `to` down for writing once everything before `from`'s FIN is out (the
/// kernel moves bytes, not FINs).
async fn one_way(
    map: &Sockmap,
    (from_half, from0, in_kernel): (&mut ReadHalf<'_>, Counters, bool),
    (to_half, to0): (&mut WriteHalf<'_>, Counters),
    local_congestion: Option<&str>,
) -> io::Result<u64> {
    let moved = if in_kernel {
        let (from, to) = (from_half.as_ref(), to_half.as_ref());
        match in_kernel_until_leaving(map, from, from0).await? {
            Left::Ended => wait_handed_on(from, from0, to, to0, true).await?,
            Left::ToUserSpace => {
                map.unpair_receiver(from)?;
                map.to_user_space.fetch_add(1, Ordering::Relaxed);
                let handed = wait_handed_on(from, from0, to, to0, false).await?;
                let rest = super::splice::forward_to_end(from_half, to_half, local_congestion);
                handed + rest.await?
            }
        }
    } else {
        super::splice::forward_to_end(from_half, to_half, local_congestion).await?
    };
    let _ = rustix::net::shutdown(to_half.as_ref(), rustix::net::Shutdown::Write);
    Ok(moved)
}

/// Why a paired direction stopped waiting.
enum Left {
    /// `from` received its peer's FIN.
    Ended,
    /// A bulk stream, or contended CPUs.
    ToUserSpace,
}

/// Watches a paired `from` until its end of stream, or until its direction should
/// leave the kernel. The kernel moves bytes without waking this task (only end of
/// stream or an error does), so a bulk stream is found by sampling `from`'s byte
/// count: every millisecond at first, half as often after each sample that finds
/// none, up to `SAMPLE_MAX`. A sample that finds a stream's rate (`BULK_RATE`), or
/// contended CPUs, moves it.
async fn in_kernel_until_leaving(
    map: &Sockmap,
    from: &TcpStream,
    from0: Counters,
) -> io::Result<Left> {
    let mut seen = from0.received;
    let mut interval = SAMPLE_MIN;
    loop {
        let woke = tokio::select! {
            r = from.readable() => { r?; true }
            () = tokio::time::sleep(interval) => false,
        };
        let info = tcp_info(from)?;
        if !still_receiving(info.tcpi_state) {
            // End of stream, or a reset: a read tells which.
            return read_end(from).map(|_| Left::Ended);
        }
        let received = info.tcpi_bytes_received;
        if received - seen >= bulk_bytes(interval) || map.contended.load(Ordering::Relaxed) {
            return Ok(Left::ToUserSpace);
        }
        seen = received;
        if woke {
            // Nothing for this socket's own queue: the read says WouldBlock, which
            // clears the readiness so the next wait sleeps.
            if read_end(from)? {
                return Ok(Left::Ended);
            }
        } else {
            interval = (interval * 2).min(SAMPLE_MAX);
        }
    }
}

/// Reads a paired socket's own queue, which only ever holds an end of stream
/// (`true`) or an error: every byte goes to the program.
fn read_end(from: &TcpStream) -> io::Result<bool> {
    let mut scratch = [0u8; 64];
    match from.try_read(&mut scratch) {
        Ok(0) => Ok(true),
        Ok(n) => Err(io::Error::other(format!(
            "{n} bytes reached a paired socket's own queue"
        ))),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    }
}

/// Waits until `to` holds every byte `from` handed on since the pairing (sent or in
/// its send queue; the kernel's own queue toward it is not visible otherwise), and
/// returns that many bytes. `fin`: `from` has received its peer's FIN, which the
/// byte count includes but nothing writes.
async fn wait_handed_on(
    from: &TcpStream,
    from0: Counters,
    to: &TcpStream,
    to0: Counters,
    fin: bool,
) -> io::Result<u64> {
    let handed = (counters(from)?.received - from0.received).saturating_sub(u64::from(fin));
    let mut pause = Duration::from_micros(50);
    loop {
        let now = counters(to)?;
        if now.closed {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        if now.written - to0.written >= handed {
            return Ok(handed);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

/// Keeps `map.contended` current from the kernel's CPU pressure (PSI): the share of
/// the last `PRESSURE_WINDOW` in which some runnable task waited for a CPU. Above
/// `CONTENDED` the kernel's per-segment work would queue behind the busy tasks;
/// below `UNCONTENDED` it runs at once. Without PSI (`/proc/pressure/cpu`, a
/// kernel built without it or booted with `psi=0`), nothing changes: every
/// connection is paired, as asked. Runs until its runtime (the plane's) stops.
pub async fn watch_cpu_pressure(map: std::sync::Arc<Sockmap>) {
    let Some(mut last) = cpu_stall_micros() else {
        tracing::info!("no CPU pressure information (PSI): kernel forwarding regardless of load");
        return;
    };
    let mut at = std::time::Instant::now();
    loop {
        tokio::time::sleep(PRESSURE_WINDOW).await;
        let Some(now) = cpu_stall_micros() else {
            return;
        };
        let wall = at.elapsed().as_micros().max(1) as f64;
        let share = now.saturating_sub(last) as f64 / wall;
        (last, at) = (now, std::time::Instant::now());
        let contended = map.contended.load(Ordering::Relaxed);
        if !contended && share > CONTENDED {
            map.contended.store(true, Ordering::Relaxed);
            tracing::info!(
                stall = format!("{:.0}%", share * 100.0),
                "CPUs contended: kernel forwarding paused"
            );
        } else if contended && share < UNCONTENDED {
            map.contended.store(false, Ordering::Relaxed);
            tracing::info!(
                stall = format!("{:.0}%", share * 100.0),
                "CPUs free again: kernel forwarding resumed"
            );
        }
    }
}

const PRESSURE_WINDOW: Duration = Duration::from_millis(100);
// One request at a time through the proxy on 2 vCPUs measured a 15% stall share,
// 64 connections at full speed 81%: the kernel path helped the first and cost the
// second 25–40% of its requests/s.
const CONTENDED: f64 = 0.40;
const UNCONTENDED: f64 = 0.20;

/// The `some` line's `total` of `/proc/pressure/cpu`: µs during which at least one
/// runnable task waited for a CPU.
fn cpu_stall_micros() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/pressure/cpu").ok()?;
    parse_stall_micros(&text)
}

fn parse_stall_micros(text: &str) -> Option<u64> {
    let some = text.lines().find(|l| l.starts_with("some "))?;
    some.split_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
}

/// The first sampling interval of a paired socket's byte count.
const SAMPLE_MIN: Duration = Duration::from_millis(1);
/// The longest: how late a bulk stream after a long quiet spell is found.
const SAMPLE_MAX: Duration = Duration::from_millis(256);
/// Bytes per second from which a direction counts as a bulk stream (16 MB/s; a
/// connection of small requests and responses moves a few hundred KB/s).
const BULK_RATE: u64 = 16 << 20;

fn bulk_bytes(interval: Duration) -> u64 {
    ((BULK_RATE as u128 * interval.as_micros()) / 1_000_000).max(super::splice::COPY_BUF as u128)
        as u64
}

const TCP_CLOSE: u8 = 7;

/// States in which the peer has not sent its FIN (nor reset).
fn still_receiving(state: u8) -> bool {
    const ESTABLISHED: u8 = 1;
    const FIN_WAIT1: u8 = 4;
    const FIN_WAIT2: u8 = 5;
    matches!(state, ESTABLISHED | FIN_WAIT1 | FIN_WAIT2)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_ended, pair, read_pattern_slowly, write_pattern};
    use super::*;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// client ⇄ (p1 | kernel | p2) ⇄ server, with the relay's result.
    async fn relayed(
        map: Arc<Sockmap>,
    ) -> (TcpStream, TcpStream, tokio::task::JoinHandle<(u64, u64)>) {
        let (client, p1) = pair().await;
        let (p2, server) = pair().await;
        let relay = spawn_relay(map, p1, p2);
        let relay =
            tokio::spawn(async move { relay.await.unwrap().expect("paired and forwarded") });
        (client, server, relay)
    }

    /// `forward` between the proxy's two sockets, in a task.
    fn spawn_relay(
        map: Arc<Sockmap>,
        mut p1: TcpStream,
        mut p2: TcpStream,
    ) -> tokio::task::JoinHandle<Result<(u64, u64), ForwardError>> {
        tokio::spawn(async move {
            forward(&map, &mut p1, &mut p2, Some("cubic"), &AtomicU64::new(0)).await
        })
    }

    fn sockmap() -> Arc<Sockmap> {
        Arc::new(Sockmap::load(16).expect("sockmap (needs root and BPF)"))
    }

    #[tokio::test]
    async fn bytes_sent_before_the_pairing_come_first_and_a_half_close_passes() {
        let map = sockmap();
        let (mut client, p1) = pair().await;
        let (p2, mut server) = pair().await;
        client.write_all(b"early ").await.unwrap();
        server.write_all(b"banner ").await.unwrap();
        // Both wait in the proxy's sockets' own queues when the pairing happens.
        p1.readable().await.unwrap();
        p2.readable().await.unwrap();
        let relay = spawn_relay(map.clone(), p1, p2);
        let mut banner = [0u8; 7];
        client.read_exact(&mut banner).await.unwrap();
        assert_eq!(&banner, b"banner ");
        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"early request", "in order, then end of stream");
        server.write_all(b"reply after half-close").await.unwrap();
        server.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"reply after half-close");
        assert_eq!(relay.await.unwrap().unwrap(), (13, 29));
        assert_eq!(map.paired.load(Ordering::Relaxed), 1);
        assert_eq!(map.to_user_space.load(Ordering::Relaxed), 0, "no bulk here");
    }

    #[tokio::test]
    async fn small_exchanges_stay_in_the_kernel() {
        let map = sockmap();
        let (mut client, mut server, relay) = relayed(map.clone()).await;
        let mut buf = [0u8; 64];
        for i in 0..2_000u32 {
            let msg = format!("request {i}");
            client.write_all(msg.as_bytes()).await.unwrap();
            server.read_exact(&mut buf[..msg.len()]).await.unwrap();
            assert_eq!(&buf[..msg.len()], msg.as_bytes());
            server.write_all(&buf[..msg.len()]).await.unwrap();
            client.read_exact(&mut buf[..msg.len()]).await.unwrap();
            assert_eq!(&buf[..msg.len()], msg.as_bytes());
        }
        drop(client);
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        drop(server);
        let (up, down) = relay.await.unwrap();
        assert_eq!(up, down);
        assert_eq!(map.to_user_space.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn ipv6_connections_pair_too() {
        let Ok(l) = TcpListener::bind("[::1]:0").await else {
            eprintln!("no IPv6 loopback here: nothing to test");
            return;
        };
        let map = sockmap();
        let six = async || {
            let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            (c, l.accept().await.unwrap().0)
        };
        let (mut client, p1) = six().await;
        let (p2, mut server) = six().await;
        let relay = spawn_relay(map.clone(), p1, p2);
        client.write_all(b"over six").await.unwrap();
        let mut buf = [0u8; 8];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"over six");
        server.write_all(b"back").await.unwrap();
        drop(server);
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"back");
        drop(client);
        assert_eq!(relay.await.unwrap().unwrap(), (8, 4));
        assert_eq!(map.paired.load(Ordering::Relaxed), 1, "in the kernel");
    }

    #[tokio::test]
    async fn a_bulk_stream_to_a_slow_receiver_moves_to_user_space_in_order() {
        let map = sockmap();
        let (mut client, mut server, relay) = relayed(map.clone()).await;
        let len = 24_000_000u32;
        client.write_all(b"small first").await.unwrap();
        let writer = write_pattern(client, len);
        let mut head = [0u8; 11];
        server.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"small first");
        read_pattern_slowly(&mut server, len).await;
        assert_ended(&mut server).await;
        drop(server);
        drop(writer.await.unwrap());
        let (up, _) = relay.await.unwrap();
        assert_eq!(up, u64::from(len) + 11);
        assert_eq!(map.to_user_space.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_connection_whose_client_already_ended_is_left_to_user_space() {
        let map = sockmap();
        let (mut client, mut p1) = pair().await;
        let (mut p2, mut server) = pair().await;
        client.write_all(b"all of it").await.unwrap();
        client.shutdown().await.unwrap();
        p1.readable().await.unwrap();
        let refused = forward(&map, &mut p1, &mut p2, None, &AtomicU64::new(0)).await;
        assert!(
            matches!(refused, Err(ForwardError::NotPaired(_))),
            "a socket past its peer's FIN cannot enter a sockmap"
        );
        assert_eq!(map.paired.load(Ordering::Relaxed), 0);
        // Nothing was left half-paired: user space forwards the connection whole.
        let relay = tokio::spawn(async move {
            super::super::splice::bidirectional(&mut p1, &mut p2, None).await
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"all of it");
        server.write_all(b"answer").await.unwrap();
        drop(server);
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"answer");
        assert_eq!(relay.await.unwrap().unwrap(), (9, 6));
    }

    #[tokio::test]
    async fn contention_keeps_new_connections_out_and_moves_paired_ones_in_order() {
        let map = sockmap();
        let (mut client, mut server, relay) = relayed(map.clone()).await;
        let mut buf = [0u8; 64];
        for i in 0..100 {
            let msg = format!("message {i}");
            client.write_all(msg.as_bytes()).await.unwrap();
            server.read_exact(&mut buf[..msg.len()]).await.unwrap();
            assert_eq!(&buf[..msg.len()], msg.as_bytes());
        }
        assert_eq!(map.to_user_space.load(Ordering::Relaxed), 0);
        map.contended.store(true, Ordering::Relaxed);
        // Both directions leave the kernel at their next sample; messages keep
        // flowing in order, both ways, throughout.
        let start = std::time::Instant::now();
        let mut i = 100;
        while map.to_user_space.load(Ordering::Relaxed) < 2 || i < 300 {
            assert!(start.elapsed() < Duration::from_secs(20), "never moved");
            let msg = format!("message {i}");
            client.write_all(msg.as_bytes()).await.unwrap();
            server.read_exact(&mut buf[..msg.len()]).await.unwrap();
            assert_eq!(&buf[..msg.len()], msg.as_bytes());
            server.write_all(msg.as_bytes()).await.unwrap();
            client.read_exact(&mut buf[..msg.len()]).await.unwrap();
            assert_eq!(&buf[..msg.len()], msg.as_bytes());
            i += 1;
        }
        drop(client);
        assert_ended(&mut server).await;
        drop(server);
        relay.await.unwrap();
        // A new connection is not paired while the CPUs are contended.
        let (_c, mut p1) = pair().await;
        let (mut p2, _s) = pair().await;
        let declined = forward(&map, &mut p1, &mut p2, None, &AtomicU64::new(0)).await;
        assert!(matches!(declined, Err(ForwardError::Declined)));
    }

    #[test]
    fn cpu_pressure_totals_parse() {
        let text = "some avg10=4.68 avg60=5.49 avg300=12.23 total=2586885502\n\
                    full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(parse_stall_micros(text), Some(2_586_885_502));
        assert_eq!(parse_stall_micros("full avg10=0.00 total=5\n"), None);
    }

    #[tokio::test]
    async fn a_client_reset_ends_the_connection() {
        let map = sockmap();
        let (mut client, p1) = pair().await;
        let (p2, mut server) = pair().await;
        let relay = spawn_relay(map.clone(), p1, p2);
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(map.paired.load(Ordering::Relaxed), 1);
        rustix::net::sockopt::set_socket_linger(&client, Some(Duration::ZERO)).unwrap();
        drop(client); // RST
        assert!(
            matches!(relay.await.unwrap(), Err(ForwardError::Io(_))),
            "the reset ends the relay with its error"
        );
        let mut rest = Vec::new();
        let _ = server.read_to_end(&mut rest).await; // closed: end of stream or reset
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn a_backend_that_never_reads_stalls_the_client() {
        let map = sockmap();
        let (client, server, _relay) = relayed(map).await;
        let chunk = vec![1u8; 1 << 20];
        let mut total = 0usize;
        // Writes until a whole second passes without room: the kernel's queues toward
        // the backend are bounded like a user-space proxy's socket buffers.
        loop {
            match client.try_write(&chunk) {
                Ok(n) => total += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let wait = tokio::time::timeout(Duration::from_secs(1), client.writable());
                    if wait.await.is_err() {
                        break;
                    }
                }
                Err(e) => panic!("{e}"),
            }
            assert!(total < 512 << 20, "{total} bytes in flight: unbounded");
        }
        assert!(total > 0);
        drop(server);
    }
}
