//! `unilink-load`: load against a running UniLink fleet, loopback only.
//!
//! ```text
//! unilink-load bootstrap --base URL --mail-dir DIR --email E --password P
//!     sign up, verify and log in, reading the mails the dev stack writes to
//!     DIR (EMAIL_OUTBOX_DIR); prints the access token
//! unilink-load get --base URL --path /users/me --token T [--connections 64] [--seconds 10]
//!     authenticated GETs from N connections; throughput and p50/p90/p99/max
//! unilink-load auth-mix --base URL --token T --email E --password P
//!         [--connections 64] [--logins 4] [--seconds 10]
//!     GET /users/me alone, then the same while N clients log in (argon2)
//!     in a loop: p99 of the GETs alone and under login load, logins/s
//!
//! unilink-load mint-tokens --ids-file F --out F2 [--secret S] [--issuer I]
//!         [--audience A] [--ttl-minutes 1440]
//!     signs an access token for each user id in F (one a line) exactly as
//!     auth does (SECRET_KEY, JWT_ISSUER, JWT_AUDIENCE… from the environment
//!     unless given; the dev secret when unset) and writes `user_id token`
//!     lines to F2: the --users file of the scenarios below
//! unilink-load relay --base-a URL [--base-b URL] --users F [--pairs 4]
//!         [--rate 1000] [--window 32] [--seconds 10] [--bare-redis redis://127.0.0.1:6379]
//!     signaling frames caller (gateway A) -> callee (gateway B) over N
//!     calls it sets up and ends itself, at RATE frames/s in all (0 = as
//!     fast as possible with WINDOW frames in flight per call): sent,
//!     received, lost, duplicates, out of order, received/s, latency
//!     p50/p90/p99/p99.9/max; with --bare-redis, then the same schedule over
//!     bare Redis PUBLISH/SUBSCRIBE, side by side
//! unilink-load presence-idle --base URL --users F [--sockets 1000] [--ramp 500]
//!         [--seconds 30] [--ping-every 25] [--pids PID,PID]
//!     opens N presence sockets at RAMP/s, holds them (ping every 25 s),
//!     closes them all; opened/failed/still open, time to close, and the
//!     resident memory of the processes in --pids per socket
//! unilink-load call-setup --base-a URL [--base-b URL] --users F [--pairs 4] [--seconds 10]
//!     callers on A ring callees holding presence sockets on B, in a loop:
//!     POST /calls/initiate -> incoming_call push latency, POST latency
//! unilink-load hops --trace F --roles L=PID,gA=PID,sA=PID,R=PID,sB=PID,gB=PID
//!         [--path fleet|bare]
//!     reads `perf script` output of a syscall trace taken during `relay
//!     --pairs 1` and prints, step by step, how long a frame waited for each
//!     process to wake, to read, and inside it (see src/hops.rs)
//! ```
//!
//! Every run is bounded by `--seconds` (at most 300) and refuses any target
//! that is not on loopback. The users of the WebSocket scenarios are the
//! first lines of `--users` (callers first, then callees); they must be
//! verified, active profiles (`scripts/bench-users.sh`).

#![allow(clippy::print_stdout)]

mod args;
mod bare_redis;
mod call_setup;
mod fleet;
mod hops;
mod http;
mod pacing;
mod presence;
mod relay;
mod stats;
mod users;

type Fail = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "usage: unilink-load bootstrap|get|auth-mix|mint-tokens|relay|presence-idle|call-setup|hops --key value ... \
                     (see the crate documentation in crates/loadgen/src/main.rs)";

async fn run(raw: Vec<String>) -> Result<(), Fail> {
    let (command, rest) = raw.split_first().ok_or(USAGE)?;
    let args = args::Args::parse(rest)?;
    match command.as_str() {
        "bootstrap" => http::bootstrap(&args).await,
        "get" => http::get(&args).await,
        "auth-mix" => http::auth_mix(&args).await,
        "mint-tokens" => users::mint_tokens(&args),
        "relay" => relay::run(&args).await,
        "presence-idle" => presence::run(&args).await,
        "call-setup" => call_setup::run(&args).await,
        "hops" => hops::run(&args),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown command {other:?}; {USAGE}").into()),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(std::env::args().skip(1).collect()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("unilink-load: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
