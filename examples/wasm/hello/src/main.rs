//! Kelp's hello-world workload. Prints a greeting, its arguments and `HOSTNAME`, then
//! exits 0 — or with `EXIT_CODE` from the environment when set.
//!
//! Optional arguments exercise the sandbox (used by Kelp's runtime tests):
//! `--stdin` reads stdin to the end, `--net` tries a TCP connection, `--cwd` prints
//! the working directory, `--stderr` writes a line to stderr.

use std::io::Read;

fn main() {
    println!("Hello from Kelp");
    let args: Vec<String> = std::env::args().collect();
    println!("args: {}", args.join(" "));
    println!("HOSTNAME={}", std::env::var("HOSTNAME").unwrap_or_default());
    for arg in args.iter().skip(1) {
        match arg.as_str() {
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
