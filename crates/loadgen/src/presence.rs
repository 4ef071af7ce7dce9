//! `presence-idle`: what an idle presence socket costs the fleet.
//!
//! Opens one `WS /calls/ws/{user_id}` per user at `--ramp` sockets/s, holds
//! them for `--seconds` (each sends `ping` every `--ping-every` seconds, as
//! the web client does, and expects `pong`), then closes them all at once
//! and times how long that takes. The resident memory of `--pids` (the
//! gateway and signaling processes) is read before, while all sockets are
//! open, and after closing: the difference per socket is the price of an
//! idle user.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::Fail;
use crate::args::Args;
use crate::fleet::{self, Buffers, OpenError};
use crate::stats::{Samples, ratio};
use crate::users::{self, User};

/// File descriptors kept free for everything that is not a socket.
const SPARE_FDS: u64 = 64;

/// Live counters, shared by every socket's task.
#[derive(Debug, Default)]
struct Counters {
    open: AtomicU64,
    pings: AtomicU64,
    pongs: AtomicU64,
    /// Pings with no `pong` by the next ping, or [`PONG_WAIT`] before the end.
    unanswered: AtomicU64,
    /// Pings sent less than [`PONG_WAIT`] before the end, still unanswered.
    in_flight: AtomicU64,
}

/// How long a `pong` may take before its ping counts as unanswered.
const PONG_WAIT: Duration = Duration::from_secs(5);

/// How one socket's life went.
#[derive(Debug)]
enum Life {
    Failed(OpenError),
    /// Open until the end, then closed.
    Held {
        connect: Duration,
        closed: fleet::Closed,
    },
    /// The server closed it (or it broke) during the hold.
    Dropped {
        connect: Duration,
        why: String,
    },
}

/// The soft `Max open files` limit of this process.
fn open_files_limit() -> Option<u64> {
    limit_of("self")
}

fn limit_of(pid: &str) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// `VmRSS` of a process, in KiB.
fn rss_kib(pid: u32) -> Result<u64, Fail> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| format!("process {pid}: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("process {pid}: no VmRSS in its status").into())
}

fn process_name(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).map_or_else(|_| "?".to_owned(), |s| s.trim().to_owned())
}

fn rss_all(pids: &[u32]) -> Result<Vec<u64>, Fail> {
    pids.iter().map(|&p| rss_kib(p)).collect()
}

/// One socket: open, ping on schedule, close when told.
async fn hold(url: String, ping_every: Duration, counters: Arc<Counters>, mut stop: watch::Receiver<bool>) -> Life {
    let started = Instant::now();
    let mut socket = match fleet::open(&url, Buffers::Small).await {
        Ok(socket) => socket,
        Err(e) => return Life::Failed(e),
    };
    let connect = started.elapsed();
    counters.open.fetch_add(1, Ordering::Relaxed);
    let mut ping = tokio::time::interval_at((Instant::now() + ping_every).into(), ping_every);
    // When the last ping went out, while its `pong` is awaited.
    let mut awaiting: Option<Instant> = None;
    let why = loop {
        tokio::select! {
            _ = stop.changed() => break None,
            _ = ping.tick() => {
                if let Err(e) = socket.send(Message::text("ping")).await {
                    break Some(format!("send failed: {e}"));
                }
                counters.pings.fetch_add(1, Ordering::Relaxed);
                if awaiting.replace(Instant::now()).is_some() {
                    counters.unanswered.fetch_add(1, Ordering::Relaxed);
                }
            }
            message = socket.next() => match message {
                Some(Ok(Message::Text(t))) if t.as_str() == "pong" => {
                    counters.pongs.fetch_add(1, Ordering::Relaxed);
                    awaiting = None;
                }
                Some(Ok(Message::Close(close))) => {
                    break Some(close.map_or_else(|| "closed".to_owned(), |c| format!("closed {}", u16::from(c.code))));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break Some(format!("error: {e}")),
                None => break Some("ended".to_owned()),
            },
        }
    };
    counters.open.fetch_sub(1, Ordering::Relaxed);
    if let Some(sent) = awaiting {
        let counter = if sent.elapsed() < PONG_WAIT {
            &counters.in_flight
        } else {
            &counters.unanswered
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
    match why {
        Some(why) => Life::Dropped { connect, why },
        None => Life::Held {
            connect,
            closed: fleet::close(socket).await,
        },
    }
}

/// `presence-idle --base URL --users FILE [--sockets 1000] [--ramp 500]
/// [--seconds 30] [--ping-every 25] [--pids PID,PID]`.
pub async fn run(args: &Args) -> Result<(), Fail> {
    let base = args.base()?;
    let sockets = usize::try_from(args.num("sockets", 1000)?.clamp(1, 100_000))?;
    let ramp = args.num("ramp", 500)?.clamp(1, 100_000);
    let hold_for = Duration::from_secs(args.seconds(30)?);
    let ping_every = Duration::from_secs(args.num("ping-every", 25)?.max(1));
    let pids = args.pids()?;
    let users = users::take(args, sockets, "presence-idle")?;

    // Each socket is a file descriptor here and one in the gateway.
    let needed = sockets as u64 + SPARE_FDS;
    match open_files_limit() {
        Some(limit) if limit < needed => {
            return Err(format!(
                "{sockets} sockets need about {needed} open files but this process may open {limit}; \
                 raise the limit first (e.g. `ulimit -n 65536`, at most the hard limit `ulimit -Hn`)"
            )
            .into());
        }
        _ => {}
    }
    for &pid in &pids {
        if let Some(limit) = limit_of(&pid.to_string())
            && limit < needed
        {
            println!(
                "presence-idle: WARNING: process {pid} ({}) may open only {limit} files; \
                 if it is the gateway, it will refuse sockets past that",
                process_name(pid)
            );
        }
    }

    let before = rss_all(&pids)?;
    let counters = Arc::new(Counters::default());
    let (stop, stopped) = watch::channel(false);
    let interval = Duration::from_secs_f64(1.0 / ramp as f64);
    let ramp_started = Instant::now();
    let mut tasks = Vec::with_capacity(sockets);
    for (i, User { id, token }) in users.into_iter().enumerate() {
        tokio::time::sleep_until((ramp_started + interval.mul_f64(i as f64)).into()).await;
        let url = fleet::ws_url(&base, &format!("/calls/ws/{id}"), &token);
        tasks.push(tokio::spawn(hold(url, ping_every, counters.clone(), stopped.clone())));
    }
    // Wait until every open has succeeded or failed.
    let attempts_done = || {
        tasks.iter().filter(|t| t.is_finished()).count() as u64 + counters.open.load(Ordering::Relaxed)
            >= sockets as u64
    };
    while !attempts_done() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ramped = ramp_started.elapsed();
    let open_after_ramp = counters.open.load(Ordering::Relaxed);
    println!(
        "presence-idle: {open_after_ramp} of {sockets} sockets open after {:.1}s (ramp {ramp}/s); holding {}s",
        ramped.as_secs_f64(),
        hold_for.as_secs()
    );
    tokio::time::sleep(Duration::from_secs(2).min(hold_for)).await;
    let settled = rss_all(&pids)?;
    tokio::time::sleep(hold_for.saturating_sub(Duration::from_secs(2))).await;
    let held = rss_all(&pids)?;
    let still_open = counters.open.load(Ordering::Relaxed);

    let closing = Instant::now();
    let _ = stop.send(true);
    let mut lives = Vec::with_capacity(sockets);
    for task in tasks {
        lives.push(task.await?);
    }
    let close_time = closing.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_all(&pids)?;

    let mut connects = Samples::default();
    let mut answers = Samples::default();
    let mut disconnects = Samples::default();
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let mut dropped: BTreeMap<String, u64> = BTreeMap::new();
    let (mut opened, mut clean, mut unclean) = (0u64, 0u64, 0u64);
    for life in lives {
        match life {
            Life::Failed(e) => *failures.entry(e.to_string()).or_default() += 1,
            Life::Held { connect, closed } => {
                opened += 1;
                connects.push(connect);
                match closed.answered {
                    Some(t) => {
                        answers.push(t);
                        clean += 1;
                    }
                    None => unclean += 1,
                }
                if let Some(t) = closed.disconnected {
                    disconnects.push(t);
                }
            }
            Life::Dropped { connect, why } => {
                opened += 1;
                connects.push(connect);
                *dropped.entry(why).or_default() += 1;
            }
        }
    }
    let failed: u64 = failures.values().sum();
    println!(
        "presence-idle: opened {opened}, failed {failed}, still open at the end {still_open}, \
         dropped by the server during the hold {}",
        dropped.values().sum::<u64>()
    );
    println!("  upgrade (connect + handshake) latency: {}", connects.summary());
    if !failures.is_empty() {
        println!("  failures: {failures:?}");
    }
    if !dropped.is_empty() {
        println!("  dropped: {dropped:?}");
    }
    println!(
        "  pings sent {}, pongs received {}, unanswered {}, still in flight when the hold ended {} \
         (each socket pings --ping-every s after it opened)",
        counters.pings.load(Ordering::Relaxed),
        counters.pongs.load(Ordering::Relaxed),
        counters.unanswered.load(Ordering::Relaxed),
        counters.in_flight.load(Ordering::Relaxed)
    );
    let answered = answers.summary();
    println!(
        "  closing {} sockets at once: every close answered after {:.0} ms, every connection ended after {:.0} ms \
         ({clean} answered, {unclean} not)",
        clean + unclean,
        answered.max,
        close_time.as_secs_f64() * 1000.0
    );
    println!("  per socket, close frame -> server's close frame: {answered}");
    println!(
        "  per socket, close frame -> server ends the connection ({} of them): {}",
        disconnects.len(),
        disconnects.summary()
    );
    if !pids.is_empty() {
        println!("  resident memory, KiB:    before   all open (+2 s)   all open (end)   delta (end)   after close");
        let mut total_delta = 0i64;
        for (i, &pid) in pids.iter().enumerate() {
            let delta = held[i] as i64 - before[i] as i64;
            total_delta += delta;
            println!(
                "  {:>7} {:<14} {:>9} {:>17} {:>16} {:>13} {:>13}",
                pid,
                process_name(pid),
                before[i],
                settled[i],
                held[i],
                delta,
                after[i]
            );
        }
        println!(
            "  total delta {total_delta} KiB for {still_open} open sockets = {:.1} KiB per socket \
             (meaningful for freshly started processes: allocators keep freed memory for reuse)",
            ratio(total_delta as f64, still_open as f64)
        );
    }
    Ok(())
}
