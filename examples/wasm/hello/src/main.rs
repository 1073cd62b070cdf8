//! Kelp's hello-world workload. Prints a greeting, its arguments and `HOSTNAME`, then
//! exits 0 — or with `EXIT_CODE` from the environment when set.
//!
//! Optional arguments exercise the sandbox (used by Kelp's runtime tests):
//! `--stdin` reads stdin to the end, `--net` tries a TCP connection, `--cwd` prints
//! the working directory, `--stderr` writes a line to stderr, `--env NAME` prints
//! `NAME=value`, `--cat PATH` prints `PATH: content` (what a pod sees of its env and
//! volumes), `--ls DIR` prints the sorted non-hidden entries of a directory, `--write PATH BYTES`
//! writes a file of that many bytes, `--sleep SECS` sleeps, `--resolve NAME` prints
//! the addresses NAME resolves to (wasi-sockets name lookup), `--connect ADDR` connects
//! over TCP and prints the local address it connected from, `--udp ADDR` (connected)
//! and `--udp-sendto ADDR` send a datagram from a socket bound to 0.0.0.0:0 and print
//! its local address, `--serve ADDR` listens on
//! ADDR, prints the address bound, answers one connection with a line and exits.

use std::io::Read;

fn main() {
    println!("Hello from Kelp");
    let args: Vec<String> = std::env::args().collect();
    println!("args: {}", args.join(" "));
    println!("HOSTNAME={}", std::env::var("HOSTNAME").unwrap_or_default());
    let mut rest = args.iter().skip(1);
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--env" => {
                let name = rest.next().cloned().unwrap_or_default();
                println!("{name}={}", std::env::var(&name).unwrap_or_default());
            }
            "--cat" => {
                let path = rest.next().cloned().unwrap_or_default();
                match std::fs::read_to_string(&path) {
                    Ok(s) => println!("{path}: {s}"),
                    Err(e) => println!("{path}: error: {e}"),
                }
            }
            "--write" => {
                let path = rest.next().cloned().unwrap_or_default();
                let n: usize = rest.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                match std::fs::write(&path, vec![b'x'; n]) {
                    Ok(()) => println!("wrote {n} bytes to {path}"),
                    Err(e) => println!("{path}: error: {e}"),
                }
            }
            "--sleep" => {
                let secs: u64 = rest.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                // One second at a time: a stop interrupts the guest between host
                // calls, not during one.
                for _ in 0..secs {
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
            }
            "--ls" => {
                let dir = rest.next().cloned().unwrap_or_default();
                match std::fs::read_dir(&dir) {
                    Ok(entries) => {
                        let mut names: Vec<String> = entries
                            .filter_map(|e| e.ok())
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            // Hidden entries (a volume's `..data`) are left out, as `ls`.
                            .filter(|n| !n.starts_with('.'))
                            .collect();
                        names.sort();
                        println!("{dir}: {}", names.join(" "));
                    }
                    Err(e) => println!("{dir}: error: {e}"),
                }
            }
            "--stdin" => {
                let mut input = String::new();
                match std::io::stdin().read_to_string(&mut input) {
                    Ok(n) => println!("stdin: {n} bytes: {}", input.trim_end()),
                    Err(e) => println!("stdin: error: {e}"),
                }
            }
            "--net" => match std::net::TcpStream::connect("127.0.0.1:9") {
                Ok(_) => println!("net: connected"),
                Err(e) => println!("net: {:?}: {e}", e.kind()),
            },
            "--connect" => {
                let addr = rest.next().cloned().unwrap_or_default();
                match std::net::TcpStream::connect(&addr) {
                    Ok(s) => match s.local_addr() {
                        Ok(local) => println!("connect {addr}: from {local}"),
                        Err(e) => println!("connect {addr}: local address: {e}"),
                    },
                    Err(e) => println!("connect {addr}: {:?}: {e}", e.kind()),
                }
            }
            "--udp" | "--udp-sendto" => {
                // A UDP client: bound to 0.0.0.0:0, then connected (or not) and sending.
                let connected = arg == "--udp";
                let addr = rest.next().cloned().unwrap_or_default();
                let sent = std::net::UdpSocket::bind("0.0.0.0:0").and_then(|s| {
                    if connected {
                        s.connect(&addr)?;
                        s.send(b"datagram from Kelp")?;
                    } else {
                        s.send_to(b"datagram from Kelp", &addr)?;
                    }
                    s.local_addr()
                });
                match sent {
                    Ok(local) => println!("udp {addr}: from {local}"),
                    Err(e) => println!("udp {addr}: {:?}: {e}", e.kind()),
                }
            }
            "--serve" => {
                use std::io::Write;
                let addr = rest.next().cloned().unwrap_or_default();
                match std::net::TcpListener::bind(&addr) {
                    Ok(l) => {
                        match l.local_addr() {
                            Ok(local) => println!("serve {addr}: bound {local}"),
                            Err(e) => println!("serve {addr}: local address: {e}"),
                        }
                        match l.accept() {
                            Ok((mut s, peer)) => {
                                let _ = s.write_all(b"served by Kelp\n");
                                println!("serve {addr}: answered {peer}");
                            }
                            Err(e) => println!("serve {addr}: accept: {e}"),
                        }
                    }
                    Err(e) => println!("serve {addr}: {:?}: {e}", e.kind()),
                }
            }
            "--resolve" => {
                use std::net::ToSocketAddrs;
                let name = rest.next().cloned().unwrap_or_default();
                match (name.as_str(), 80).to_socket_addrs() {
                    Ok(addrs) => {
                        let ips: Vec<String> = addrs.map(|a| a.ip().to_string()).collect();
                        println!("resolve {name}: {}", ips.join(" "))
                    }
                    Err(e) => println!("resolve {name}: {:?}: {e}", e.kind()),
                }
            }
            "--cwd" => println!(
                "cwd: {} PWD={}",
                std::env::current_dir()
                    .map(|d| d.display().to_string())
                    .unwrap_or_else(|e| format!("error: {e}")),
                std::env::var("PWD").unwrap_or_default()
            ),
            "--stderr" => eprintln!("hello on stderr"),
            _ => {}
        }
    }
    if let Ok(code) = std::env::var("EXIT_CODE") {
        std::process::exit(code.parse().unwrap_or(1));
    }
}
