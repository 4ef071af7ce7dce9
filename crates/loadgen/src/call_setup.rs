//! `call-setup`: from a caller's `POST /calls/initiate` to the ring on the
//! callee's presence socket.
//!
//! Each of `--pairs` callers (gateway A) rings its own callee, who holds a
//! presence socket on gateway B, in a loop for `--seconds`: the time from
//! sending the POST until the `incoming_call` push for that call arrives is
//! the set-up latency (it crosses signaling, the outbox, the event stream,
//! the notification service and Redis pub/sub); the POST's own latency is
//! reported apart. The caller then cancels (`POST /calls/end/{id}`) and
//! rings again. Pairs never share a user: one open call per user is the
//! rule, and a conflict (409) is counted, cleaned up and retried.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::Fail;
use crate::args::Args;
use crate::fleet::{self, Action, CallsApi, Socket, status_of};
use crate::stats::Samples;
use crate::users::{self, User};

/// How long a ring may take to arrive before it counts as missing.
const RING_TIMEOUT: Duration = Duration::from_secs(5);
/// Presence pings while the loop runs (the server wants a sign of life).
const PING_EVERY: Duration = Duration::from_secs(25);

/// What one pair measured.
#[derive(Debug, Default)]
struct PairResult {
    setup: Samples,
    initiate: Samples,
    end: Samples,
    /// Failures by kind ("initiate HTTP 409", "no ring", …).
    errors: BTreeMap<String, u64>,
}

impl PairResult {
    fn error(&mut self, kind: String) {
        *self.errors.entry(kind).or_default() += 1;
    }

    fn merge(&mut self, other: PairResult) {
        self.setup.merge(other.setup);
        self.initiate.merge(other.initiate);
        self.end.merge(other.end);
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }
}

fn failure(step: &str, e: &Fail) -> String {
    match status_of(e) {
        Some(status) => format!("{step} HTTP {status}"),
        None => format!("{step}: {e}"),
    }
}

/// Reads the callee's presence socket: each `incoming_call`'s id and
/// arrival time goes to the pair's loop. Keeps the socket alive with pings.
async fn listen(mut socket: Socket, rings: mpsc::UnboundedSender<(String, Instant)>, mut stop: watch::Receiver<bool>) {
    let mut ping = tokio::time::interval_at((Instant::now() + PING_EVERY).into(), PING_EVERY);
    loop {
        tokio::select! {
            message = socket.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    let at = Instant::now();
                    if let Ok(unilink_protocol::Push::IncomingCall { call_id, .. }) = serde_json::from_str(text.as_str())
                        && rings.send((call_id, at)).is_err()
                    {
                        break;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
            _ = ping.tick() => {
                if socket.send(Message::text("ping")).await.is_err() {
                    break;
                }
            }
            _ = stop.changed() => {
                fleet::close(socket).await;
                return;
            }
        }
    }
}

/// Rings, waits for the ring, cancels; again until `until`.
async fn ring_loop(
    api: CallsApi,
    (base_a, base_b): (String, String),
    caller: User,
    callee: User,
    mut rings: mpsc::UnboundedReceiver<(String, Instant)>,
    until: Instant,
) -> PairResult {
    let mut result = PairResult::default();
    while Instant::now() < until {
        let sent = Instant::now();
        let call = match api.initiate(&base_a, &caller, &callee).await {
            Ok(call) => call,
            Err(e) => {
                result.error(failure("initiate", &e));
                if status_of(&e) == Some(409) {
                    // A call of this pair still open (a ring that timed out
                    // in the middle, an earlier run): end it and go on.
                    let _ = api.end_open_calls(&base_a, &caller).await;
                    let _ = api.end_open_calls(&base_b, &callee).await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        result.initiate.push(sent.elapsed());
        let deadline = sent + RING_TIMEOUT;
        let rang = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, rings.recv()).await {
                Ok(Some((id, at))) if id == call => break Some(at),
                // The ring of an earlier call that came late.
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break None,
            }
        };
        match rang {
            Some(at) => result.setup.push(at.saturating_duration_since(sent)),
            None => result.error("no incoming_call push within 5 s".to_owned()),
        }
        let ending = Instant::now();
        match api.act(&base_a, &caller, Action::End, &call).await {
            Ok(()) => result.end.push(ending.elapsed()),
            Err(e) => result.error(failure("end", &e)),
        }
    }
    result
}

/// `call-setup --base-a URL [--base-b URL] --users FILE [--pairs 4] [--seconds 10]`.
pub async fn run(args: &Args) -> Result<(), Fail> {
    let (base_a, base_b) = args.bases()?;
    let pairs = usize::try_from(args.num("pairs", 4)?.clamp(1, 5000))?;
    let seconds = args.seconds(10)?;
    let users = users::take(args, 2 * pairs, "call-setup")?;
    let (callers, callees) = users.split_at(pairs);
    let api = CallsApi::new()?;

    let leftovers = fleet::for_each(users.clone(), 16, |u| {
        let (api, base) = (&api, &base_a);
        async move { api.end_open_calls(base, &u).await }
    })
    .await
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?
    .into_iter()
    .sum::<usize>();
    if leftovers > 0 {
        println!("call-setup: ended {leftovers} calls left open by an earlier run");
    }
    let sockets = fleet::for_each(callees.to_vec(), 32, |u| {
        let base = &base_b;
        async move { fleet::go_online(base, &u).await }
    })
    .await
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;

    let (stop, stopped) = watch::channel(false);
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut listeners = Vec::new();
    let mut loops = Vec::new();
    for ((caller, callee), socket) in callers.iter().zip(callees).zip(sockets) {
        let (tx, rx) = mpsc::unbounded_channel();
        listeners.push(tokio::spawn(listen(socket, tx, stopped.clone())));
        loops.push(tokio::spawn(ring_loop(
            api.clone(),
            (base_a.clone(), base_b.clone()),
            caller.clone(),
            callee.clone(),
            rx,
            until,
        )));
    }
    let mut total = PairResult::default();
    for l in loops {
        total.merge(l.await?);
    }
    let elapsed = started.elapsed();
    let _ = stop.send(true);
    for l in listeners {
        l.await?;
    }

    let errors: u64 = total.errors.values().sum();
    println!(
        "call-setup: {pairs} pairs (caller on {base_a}, callee on {base_b}) for {seconds}s: \
         {} calls rung = {:.1}/s, {errors} errors",
        total.setup.len(),
        total.setup.len() as f64 / elapsed.as_secs_f64()
    );
    println!("  POST → incoming_call push: {}", total.setup.summary());
    println!("  POST /calls/initiate:      {}", total.initiate.summary());
    println!("  POST /calls/end (cancel):  {}", total.end.summary());
    if !total.errors.is_empty() {
        println!("  errors: {:?}", total.errors);
        if total.errors.keys().any(|k| k.ends_with("HTTP 429")) {
            println!("  (429: the gateway's per-user limit; start the fleet with RATE_LIMIT_API=1000000)");
        }
    }
    Ok(())
}
