//! `relay`: latency and throughput of signaling frames from one side of a
//! call to the other, across replicas.
//!
//! Per pair of users, a call is rung through the public API (the callee's
//! presence socket open on gateway B), accepted, and both sides open
//! `WS /ws/webrtc/{call_id}`: the caller on gateway A, the callee on B. The
//! callers then send `ice_candidate` frames stamped with the time since a
//! start instant shared by the whole process, at `--rate` frames/s in all;
//! the callees' sockets take each frame's latency off the same clock.
//! Afterwards the calls are ended.
//!
//! With `--bare-redis`, the same schedule is then run over Redis pub/sub
//! alone ([`crate::bare_redis`]) and both are printed together: what the
//! fleet adds on top of the transport it relays over.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use unilink_protocol::{ClientFrame, ClientMessage};

use crate::Fail;
use crate::args::Args;
use crate::fleet::{self, Action, Buffers, CallsApi, Socket};
use crate::pacing::{self, Arrivals, Pacer, Progress, Sent, Tally, candidate, stamp};
use crate::stats::ratio;
use crate::users::{self, User};

/// How long frames still in flight may take to arrive after sending stops.
const DRAIN: Duration = Duration::from_secs(2);
/// REST calls and socket opens in flight at once while setting up.
const SETUP_PARALLEL: usize = 16;

/// One call being measured.
struct Pair {
    caller: User,
    call: String,
    presence: Socket,
    caller_socket: Socket,
    callee_socket: Socket,
}

/// What the sockets saw besides the frames being measured.
#[derive(Debug, Default)]
struct Noise {
    /// `error` frames by message (the rate limit's among them).
    errors: BTreeMap<String, u64>,
    /// Sockets the server closed during the run, by close code.
    closed: BTreeMap<String, u64>,
}

impl Noise {
    fn merge(&mut self, other: Noise) {
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        for (k, v) in other.closed {
            *self.closed.entry(k).or_default() += v;
        }
    }

    fn rate_limited(&self) -> u64 {
        self.errors
            .iter()
            .filter(|(m, _)| m.starts_with("rate limit exceeded"))
            .map(|(_, n)| n)
            .sum()
    }
}

#[derive(serde::Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    candidate: Option<Stamp>,
    #[serde(borrow)]
    message: Option<Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct Stamp {
    t: u64,
    n: u64,
}

/// Counts what a socket reads that is not a measured frame; `Some` of an
/// arrival `(t, n)` when it is one.
fn classify(message: &Message, noise: &mut Noise) -> Option<(u64, u64)> {
    match message {
        Message::Text(text) => {
            let Ok(frame) = serde_json::from_str::<Incoming<'_>>(text.as_str()) else {
                *noise.errors.entry("unparsable frame".to_owned()).or_default() += 1;
                return None;
            };
            match (frame.kind.as_ref(), frame.candidate) {
                ("ice_candidate", Some(stamp)) => Some((stamp.t, stamp.n)),
                ("error", _) => {
                    let text = frame.message.unwrap_or_default();
                    // The rate limit's message names the limit; one entry for it.
                    let key = if text.starts_with("rate limit exceeded") {
                        text.into_owned()
                    } else {
                        text.chars().take(80).collect()
                    };
                    *noise.errors.entry(key).or_default() += 1;
                    None
                }
                _ => None,
            }
        }
        Message::Close(close) => {
            let code = close
                .as_ref()
                .map_or_else(|| "none".to_owned(), |c| u16::from(c.code).to_string());
            let reason = close.as_ref().map(|c| c.reason.to_string()).unwrap_or_default();
            *noise.closed.entry(format!("{code} {reason}")).or_default() += 1;
            None
        }
        _ => None,
    }
}

/// The callee's socket: records every frame until told to stop.
async fn receive(
    mut socket: Socket,
    origin: Instant,
    progress: Arc<Progress>,
    mut stop: watch::Receiver<bool>,
) -> (Arrivals, Noise) {
    let mut arrivals = Arrivals::default();
    let mut noise = Noise::default();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            message = socket.next() => match message {
                Some(Ok(message)) => {
                    if let Some((t, n)) = classify(&message, &mut noise)
                        && arrivals.record(origin, t, n)
                    {
                        progress.arrive();
                    }
                }
                Some(Err(e)) => {
                    *noise.closed.entry(format!("error {e}")).or_default() += 1;
                    break;
                }
                None => break,
            },
        }
    }
    (arrivals, noise)
}

/// The caller's socket, read while it sends: refusals come back on it.
/// Sets `gone` when the server closes it, so its sender stops.
async fn watch_sender(
    mut socket: SplitStream<Socket>,
    gone: Arc<AtomicBool>,
    mut stop: watch::Receiver<bool>,
) -> Noise {
    let mut noise = Noise::default();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            message = socket.next() => match message {
                Some(Ok(message)) => {
                    classify(&message, &mut noise);
                    if message.is_close() {
                        gone.store(true, Ordering::Relaxed);
                    }
                }
                Some(Err(_)) | None => {
                    gone.store(true, Ordering::Relaxed);
                    break;
                }
            },
        }
    }
    noise
}

/// Sends stamped frames on the schedule until the run or the socket ends.
async fn send(mut sink: SplitSink<Socket, Message>, origin: Instant, mut pacer: Pacer, gone: Arc<AtomicBool>) -> Sent {
    let mut sent = 0u64;
    while pacer.wait().await && !gone.load(Ordering::Relaxed) {
        let n = sent + 1;
        let frame = ClientFrame {
            message: ClientMessage::IceCandidate {
                candidate: candidate(stamp(origin), n),
            },
            cid: None,
            cseq: None,
        };
        let text = serde_json::to_string(&frame).expect("client frames serialize");
        if sink.send(Message::text(text)).await.is_err() {
            break;
        }
        sent = n;
    }
    pacer.finish(sent)
}

/// Rings, accepts and joins one call; the pair ready to measure.
async fn set_up(api: &CallsApi, base_a: &str, base_b: &str, caller: User, callee: User) -> Result<Pair, Fail> {
    let presence = fleet::go_online(base_b, &callee).await?;
    let call = api
        .initiate(base_a, &caller, &callee)
        .await
        .map_err(|e| format!("ringing {}: {e}", callee.id))?;
    let joined = async {
        api.act(base_b, &callee, Action::Accept, &call)
            .await
            .map_err(|e| format!("accepting {call}: {e}"))?;
        let path = format!("/ws/webrtc/{call}");
        let callee_socket = fleet::open(&fleet::ws_url(base_b, &path, &callee.token), Buffers::Large)
            .await
            .map_err(|e| format!("callee's signaling socket: {e}"))?;
        let caller_socket = fleet::open(&fleet::ws_url(base_a, &path, &caller.token), Buffers::Large)
            .await
            .map_err(|e| format!("caller's signaling socket: {e}"))?;
        Ok::<_, Fail>((callee_socket, caller_socket))
    };
    match joined.await {
        Ok((callee_socket, caller_socket)) => Ok(Pair {
            caller,
            call,
            presence,
            caller_socket,
            callee_socket,
        }),
        Err(e) => {
            let _ = api.act(base_a, &caller, Action::End, &call).await;
            fleet::close(presence).await;
            Err(e)
        }
    }
}

/// `relay --base-a URL [--base-b URL] --users FILE [--pairs 4] [--rate 1000]
/// [--window 32] [--seconds 10] [--bare-redis redis://127.0.0.1:6379]`.
pub async fn run(args: &Args) -> Result<(), Fail> {
    let (base_a, base_b) = args.bases()?;
    let pairs = usize::try_from(args.num("pairs", 4)?.clamp(1, 5000))?;
    let rate = args.num("rate", 1000)?;
    let window = args.num("window", 32)?.clamp(1, 100_000);
    let seconds = args.seconds(10)?;
    let bare = match args.opt("bare-redis") {
        Some(_) => Some(args.url("bare-redis", "redis://")?),
        None => None,
    };
    let users = users::take(args, 2 * pairs, "relay")?;
    let (callers, callees) = users.split_at(pairs);
    let api = CallsApi::new()?;

    let leftovers: usize = fleet::for_each(users.clone(), SETUP_PARALLEL, |u| {
        let (api, base) = (&api, &base_a);
        async move { api.end_open_calls(base, &u).await }
    })
    .await
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?
    .into_iter()
    .sum();
    if leftovers > 0 {
        println!("relay: ended {leftovers} calls left open by an earlier run");
    }

    let setup_started = Instant::now();
    let jobs: Vec<(User, User)> = callers.iter().cloned().zip(callees.iter().cloned()).collect();
    let results = fleet::for_each(jobs, SETUP_PARALLEL, |(caller, callee)| {
        let (api, a, b) = (&api, &base_a, &base_b);
        async move { set_up(api, a, b, caller, callee).await }
    })
    .await;
    let mut ready = Vec::new();
    let mut failures = Vec::new();
    for result in results {
        match result {
            Ok(pair) => ready.push(pair),
            Err(e) => failures.push(e.to_string()),
        }
    }
    println!(
        "relay: {} of {pairs} calls set up in {:.1}s (caller on {base_a}, callee on {base_b})",
        ready.len(),
        setup_started.elapsed().as_secs_f64()
    );
    for e in failures.iter().take(5) {
        println!("  set-up failed: {e}");
    }
    if ready.is_empty() {
        return Err("no call could be set up".into());
    }
    let pairs = ready.len();

    let origin = Instant::now();
    let (stop, stopped) = watch::channel(false);
    let start = Instant::now() + Duration::from_millis(100);
    let until = start + Duration::from_secs(seconds);
    let mut senders = Vec::new();
    let mut watchers = Vec::new();
    let mut receivers = Vec::new();
    let mut kept = Vec::new();
    let mut progress = Vec::new();
    for (index, pair) in ready.into_iter().enumerate() {
        let (sink, stream) = pair.caller_socket.split();
        let arrivals = Arc::new(Progress::default());
        let pacer = Pacer::new((rate, window), (pairs, index), (start, until), arrivals.clone());
        let gone = Arc::new(AtomicBool::new(false));
        senders.push(tokio::spawn(send(sink, origin, pacer, gone.clone())));
        watchers.push(tokio::spawn(watch_sender(stream, gone, stopped.clone())));
        receivers.push(tokio::spawn(receive(
            pair.callee_socket,
            origin,
            arrivals.clone(),
            stopped.clone(),
        )));
        progress.push(arrivals);
        kept.push((pair.caller, pair.call, pair.presence));
    }
    let mut fleet_tally = Tally::default();
    for sender in senders {
        fleet_tally.add_sent(sender.await?, start);
    }
    pacing::drain(&progress, fleet_tally.sent, DRAIN).await;
    let _ = stop.send(true);
    let mut noise = Noise::default();
    for receiver in receivers {
        let (arrivals, seen) = receiver.await?;
        fleet_tally.add(arrivals, start);
        noise.merge(seen);
    }
    for watcher in watchers {
        noise.merge(watcher.await?);
    }

    // Hang up; the server closes the signaling sockets with 1000.
    let ended = fleet::for_each(kept, SETUP_PARALLEL, |(caller, call, presence)| {
        let (api, base) = (&api, &base_a);
        async move {
            let ended = api.act(base, &caller, Action::End, &call).await;
            fleet::close(presence).await;
            ended.map_err(|e| format!("ending {call}: {e}"))
        }
    })
    .await;
    let not_ended: Vec<String> = ended.into_iter().filter_map(Result::err).collect();

    let bare_tally = match &bare {
        Some(url) => {
            let senders = callers
                .iter()
                .take(pairs)
                .map(|u| unilink_domain::UserId::parse(&u.id).map_err(|e| format!("user id {:?}: {e}", u.id)))
                .collect::<Result<Vec<_>, _>>()?;
            Some(crate::bare_redis::measure(url, &senders, (rate, window), seconds, DRAIN).await?)
        }
        None => None,
    };

    let target = if rate == 0 {
        format!("as fast as possible (at most {window} frames in flight per pair)")
    } else {
        format!("{rate} frames/s in all")
    };
    println!("relay: {pairs} pairs, {target}, for {seconds}s");
    report(&mut fleet_tally, bare_tally, rate > 0);
    if !noise.errors.is_empty() {
        println!("  error frames received: {:?}", noise.errors);
    }
    if !noise.closed.is_empty() {
        println!("  sockets closed by the server during the run: {:?}", noise.closed);
    }
    let limited = noise.rate_limited();
    if limited > 0 {
        let per_socket = if rate == 0 {
            "the most it can".to_owned()
        } else {
            format!("{:.0}", rate as f64 / pairs as f64)
        };
        println!(
            "  WARNING: {limited} frames were refused by the per-socket rate limit; start the fleet with \
             SIGNALING_FRAME_RATE above the rate of one socket ({per_socket} frames/s here)"
        );
    }
    for e in not_ended.iter().take(5) {
        println!("  WARNING: {e}");
    }
    Ok(())
}

/// The table: the fleet's relay, and bare Redis under it when measured.
fn report(fleet_tally: &mut Tally, bare: Option<Tally>, rated: bool) {
    // Rated runs are open loop (how late the sender fell behind matters);
    // unrated ones keep a window in flight (whether it stalled matters).
    let last = if rated { "lag max" } else { "stalls" };
    println!(
        "  {:<20} {:>8} {:>8} {:>6} {:>5} {:>5} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "", "sent", "received", "lost", "dup", "ooo", "recv/s", "p50", "p90", "p99", "p99.9", "max", last
    );
    let line = |label: &str, t: &mut Tally| {
        let s = t.samples.summary();
        let last = if rated {
            format!("{:.2}", t.max_lag.as_secs_f64() * 1000.0)
        } else {
            t.stalls.to_string()
        };
        println!(
            "  {:<20} {:>8} {:>8} {:>6} {:>5} {:>5} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8}",
            label,
            t.sent,
            t.received,
            t.lost(),
            t.duplicates,
            t.out_of_order,
            ratio(t.received as f64, t.receiving.as_secs_f64()),
            s.p50,
            s.p90,
            s.p99,
            s.p999,
            s.max,
            last,
        );
        s
    };
    let fleet_summary = line("fleet A -> B (ms)", fleet_tally);
    if let Some(mut bare) = bare {
        let bare_summary = line("bare Redis (ms)", &mut bare);
        println!(
            "  fleet / bare Redis: p50 {:.1}x, p99 {:.1}x",
            ratio(fleet_summary.p50, bare_summary.p50),
            ratio(fleet_summary.p99, bare_summary.p99)
        );
    }
    if rated {
        println!(
            "  (latency = arrival − send on one clock; lost = not arrived {}s after sending stopped; \
             ooo = arrived after a later frame; lag = worst delay of a send behind its schedule)",
            DRAIN.as_secs()
        );
    } else {
        println!(
            "  (latency = arrival − send on one clock; lost = not arrived {}s after sending stopped; \
             ooo = arrived after a later frame; stalls = a full window with nothing arriving for {}s, \
             after which the sender went on)",
            DRAIN.as_secs(),
            pacing::STALL.as_secs()
        );
    }
}
