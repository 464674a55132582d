//! The memory attacks of issue 12 (item 7) against a running `ibkit serve`,
//! printing the service's resident memory (scripts/bench-serve-memory.sh).
//!
//! ```text
//! ibkit serve --listen 127.0.0.1:0 --state-dir /tmp/m --agent-binary BIG_FILE &
//! cargo run --release -p ibkit-server --example serve_memory -- \
//!     --url https://127.0.0.1:PORT --state-dir /tmp/m --pid PID --agent-binary BIG_FILE
//! ```
//! The service must serve `BIG_FILE` as the agent binary (64 MiB makes the
//! slow downloads last).

#[path = "../tests/common/attack.rs"]
mod attack;

use std::path::PathBuf;

fn args() -> Result<(String, PathBuf, u32, PathBuf, attack::Plan), String> {
    let (mut url, mut state, mut pid, mut binary) = (None, None, None, None);
    let mut plan = attack::Plan::default();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut v = || it.next().ok_or(format!("{a} needs a value"));
        let num = |s: String| s.parse::<usize>().map_err(|e| format!("{e}"));
        match a.as_str() {
            "--url" => url = Some(v()?),
            "--state-dir" => state = Some(PathBuf::from(v()?)),
            "--pid" => pid = Some(v()?.parse::<u32>().map_err(|e| format!("--pid: {e}"))?),
            "--agent-binary" => binary = Some(PathBuf::from(v()?)),
            "--slow-downloads" => plan.slow_downloads = num(v()?)?,
            "--hosts" => plan.hosts = num(v()?)?,
            "--reports-per-host" => plan.reports_per_host = num(v()?)?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    match (url, state, pid, binary) {
        (Some(u), Some(s), Some(p), Some(b)) => Ok((u, s, p, b, plan)),
        _ => Err("--url, --state-dir, --pid and --agent-binary are required".into()),
    }
}

#[tokio::main]
async fn main() {
    let (url, state, pid, binary, plan) = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("serve_memory: {e}");
            std::process::exit(2);
        }
    };
    let target = attack::Target::from_state(&url, pid, &state, &binary);
    let fig = attack::run(&target, &plan).await;
    println!(
        "{} slow downloads of a {:.0} MiB agent binary + {} reports of ~15 MiB ({} hosts)",
        plan.slow_downloads,
        std::fs::metadata(&binary).map_or(0.0, |m| m.len() as f64 / (1 << 20) as f64),
        plan.hosts * plan.reports_per_host,
        plan.hosts
    );
    println!("{fig}");
}
