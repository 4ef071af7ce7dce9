//! The floor under the relay: Redis `PUBLISH` → `SUBSCRIBE` alone, at the
//! same rate and with payloads like the relay's, to set the fleet's relay
//! latency against.
//!
//! It mirrors the relay's shape: one subscriber connection holding one
//! channel per pair (a signaling replica has one pub/sub connection for all
//! its mailboxes), and per pair a publisher that waits for each `PUBLISH`
//! answer before the next (signaling runs one script per frame, in order).
//! A few lines of RESP over a `TcpStream` are all it needs, so the load
//! generator carries no Redis client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::Fail;
use crate::pacing::{Arrivals, Pacer, Progress, Tally, candidate, stamp};

/// One RESP value (arrays hold scalars only: enough for pub/sub).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Resp {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Resp>),
}

/// A RESP connection.
struct Connection {
    stream: BufReader<TcpStream>,
    line: Vec<u8>,
}

/// `*N\r\n$len\r\narg\r\n…`: a command as Redis reads it.
fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

impl Connection {
    /// Connects to `redis://[:password@]host:port[/db]`.
    async fn open(url: &str) -> Result<Connection, Fail> {
        let rest = url
            .strip_prefix("redis://")
            .ok_or("--bare-redis must be a redis:// URL")?;
        let (authority, db) = rest.split_once('/').unwrap_or((rest, ""));
        let (password, host_port) = match authority.rsplit_once('@') {
            Some((user_info, host_port)) => {
                let password = user_info.split_once(':').map_or(user_info, |(_, p)| p);
                (Some(password.to_owned()).filter(|p| !p.is_empty()), host_port)
            }
            None => (None, authority),
        };
        let address = if host_port
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            host_port.to_owned()
        } else {
            format!("{host_port}:6379")
        };
        let stream = TcpStream::connect(&address)
            .await
            .map_err(|e| format!("bare Redis at {address}: {e}"))?;
        stream.set_nodelay(true)?;
        let mut connection = Connection {
            stream: BufReader::new(stream),
            line: Vec::new(),
        };
        if let Some(password) = password {
            connection.expect_ok(&[b"AUTH", password.as_bytes()]).await?;
        }
        if !db.is_empty() {
            connection.expect_ok(&[b"SELECT", db.as_bytes()]).await?;
        }
        Ok(connection)
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), Fail> {
        self.stream.get_mut().write_all(bytes).await?;
        Ok(())
    }

    /// Sends a command and reads its answer; a Redis error is an error.
    async fn call(&mut self, args: &[&[u8]]) -> Result<Resp, Fail> {
        self.send(&command(args)).await?;
        match self.read().await? {
            Resp::Error(e) => Err(format!("bare Redis: {e}").into()),
            answer => Ok(answer),
        }
    }

    async fn expect_ok(&mut self, args: &[&[u8]]) -> Result<(), Fail> {
        match self.call(args).await? {
            Resp::Simple(ok) if ok == "OK" => Ok(()),
            other => Err(format!("bare Redis: {} answered {other:?}", String::from_utf8_lossy(args[0])).into()),
        }
    }

    async fn read_line(&mut self) -> Result<(u8, String), Fail> {
        self.line.clear();
        let n = self.stream.read_until(b'\n', &mut self.line).await?;
        if n == 0 {
            return Err("bare Redis closed the connection".into());
        }
        let line = self
            .line
            .strip_suffix(b"\r\n")
            .ok_or("bare Redis: a line without CRLF")?;
        let (&kind, rest) = line.split_first().ok_or("bare Redis: an empty line")?;
        Ok((kind, String::from_utf8_lossy(rest).into_owned()))
    }

    async fn read_scalar(&mut self, kind: u8, rest: String) -> Result<Resp, Fail> {
        let number =
            |s: &str| -> Result<i64, Fail> { s.parse().map_err(|_| format!("bare Redis: bad number {s:?}").into()) };
        Ok(match kind {
            b'+' => Resp::Simple(rest),
            b'-' => Resp::Error(rest),
            b':' => Resp::Integer(number(&rest)?),
            b'$' => {
                let len = number(&rest)?;
                if len < 0 {
                    Resp::Bulk(None)
                } else {
                    let mut data = vec![0; usize::try_from(len)? + 2];
                    self.stream.read_exact(&mut data).await?;
                    data.truncate(data.len() - 2);
                    Resp::Bulk(Some(data))
                }
            }
            other => return Err(format!("bare Redis: unexpected type byte {:?}", other as char).into()),
        })
    }

    async fn read(&mut self) -> Result<Resp, Fail> {
        let (kind, rest) = self.read_line().await?;
        if kind != b'*' {
            return self.read_scalar(kind, rest).await;
        }
        let len: i64 = rest.parse().map_err(|_| "bare Redis: bad array length")?;
        let mut items = Vec::with_capacity(usize::try_from(len.max(0))?);
        for _ in 0..len {
            let (kind, rest) = self.read_line().await?;
            if kind == b'*' {
                return Err("bare Redis: nested arrays are not expected here".into());
            }
            items.push(self.read_scalar(kind, rest).await?);
        }
        Ok(Resp::Array(items))
    }
}

/// The channel of pair `index`.
fn channel(run: &str, index: usize) -> String {
    format!("unilink-load:bare:{run}:{index}")
}

/// A message shaped like signaling's relay messages
/// (`1|seq|sender|sent µs|traceparent|frame`), so the sizes match.
fn payload(seq: u64, from: &str, t: u64) -> String {
    format!(
        r#"1|{seq}|{from}|1795000000000000|00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01|{{"seq":{seq},"type":"ice_candidate","candidate":{},"from":"{from}"}}"#,
        candidate(t, seq)
    )
}

#[derive(serde::Deserialize)]
struct Frame {
    candidate: Stamp,
}

#[derive(serde::Deserialize)]
struct Stamp {
    t: u64,
    n: u64,
}

/// `(pair, t, n)` of a pub/sub `message` push.
fn parse_message(value: &Resp, prefix: &str) -> Option<(usize, u64, u64)> {
    let Resp::Array(items) = value else { return None };
    let [
        Resp::Bulk(Some(kind)),
        Resp::Bulk(Some(channel)),
        Resp::Bulk(Some(data)),
    ] = items.as_slice()
    else {
        return None;
    };
    if kind.as_slice() != b"message" {
        return None;
    }
    let index = std::str::from_utf8(channel).ok()?.strip_prefix(prefix)?.parse().ok()?;
    let text = std::str::from_utf8(data).ok()?;
    let (_, json) = text.rsplit_once('|')?;
    let frame: Frame = serde_json::from_str(json).ok()?;
    Some((index, frame.candidate.t, frame.candidate.n))
}

/// Publishes from `senders.len()` pairs at `rate` frames/s in all (0 = each
/// as fast as Redis answers, at most `window` in flight) for `seconds`,
/// drains for up to `drain`.
pub async fn measure(
    url: &str,
    senders: &[String],
    (rate, window): (u64, u64),
    seconds: u64,
    drain: Duration,
) -> Result<Tally, Fail> {
    let pairs = senders.len();
    let run = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let prefix = format!("unilink-load:bare:{run}:");

    let mut subscriber = Connection::open(url).await?;
    let names: Vec<String> = (0..pairs).map(|i| channel(&run, i)).collect();
    let mut subscribe: Vec<&[u8]> = vec![b"SUBSCRIBE"];
    subscribe.extend(names.iter().map(String::as_bytes));
    subscriber.send(&command(&subscribe)).await?;
    for _ in 0..pairs {
        match subscriber.read().await? {
            Resp::Array(items) if items.first() == Some(&Resp::Bulk(Some(b"subscribe".to_vec()))) => {}
            other => return Err(format!("bare Redis: SUBSCRIBE answered {other:?}").into()),
        }
    }
    let mut publishers = Vec::with_capacity(pairs);
    for _ in 0..pairs {
        publishers.push(Connection::open(url).await?);
    }

    let origin = Instant::now();
    let (stop, stopped) = watch::channel(false);
    let progress: Vec<Arc<Progress>> = (0..pairs).map(|_| Arc::default()).collect();
    let counters = progress.clone();
    let reader = tokio::spawn(async move {
        let mut arrivals: Vec<Arrivals> = (0..pairs).map(|_| Arrivals::default()).collect();
        let mut stopped = stopped;
        loop {
            tokio::select! {
                _ = stopped.changed() => break,
                value = subscriber.read() => match value {
                    Ok(value) => {
                        if let Some((i, t, n)) = parse_message(&value, &prefix)
                            && let Some(a) = arrivals.get_mut(i)
                            && a.record(origin, t, n)
                        {
                            counters[i].arrive();
                        }
                    }
                    Err(e) => {
                        eprintln!("unilink-load: bare Redis subscriber: {e}");
                        break;
                    }
                },
            }
        }
        arrivals
    });

    let start = Instant::now();
    let until = start + Duration::from_secs(seconds);
    let mut tasks = Vec::with_capacity(pairs);
    for (index, (mut publisher, from)) in publishers.into_iter().zip(senders.iter().cloned()).enumerate() {
        let channel = names[index].clone();
        let mut pacer = Pacer::new((rate, window), (pairs, index), (start, until), progress[index].clone());
        tasks.push(tokio::spawn(async move {
            let mut sent = 0u64;
            while pacer.wait().await {
                let message = payload(sent + 1, &from, stamp(origin));
                match publisher
                    .call(&[b"PUBLISH", channel.as_bytes(), message.as_bytes()])
                    .await
                {
                    Ok(Resp::Integer(1..)) => sent += 1,
                    Ok(other) => {
                        eprintln!("unilink-load: bare Redis PUBLISH answered {other:?} (no subscriber?)");
                        break;
                    }
                    Err(e) => {
                        eprintln!("unilink-load: bare Redis publisher: {e}");
                        break;
                    }
                }
            }
            pacer.finish(sent)
        }));
    }
    let mut tally = Tally::default();
    for task in tasks {
        tally.add_sent(task.await?, start);
    }
    crate::pacing::drain(&progress, tally.sent, drain).await;
    let _ = stop.send(true);
    for arrivals in reader.await? {
        tally.add(arrivals, start);
    }
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_resp_arrays_of_bulk_strings() {
        assert_eq!(
            command(&[b"PUBLISH", b"ch", b"hi"]),
            b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$2\r\nhi\r\n".to_vec()
        );
    }

    #[test]
    fn messages_yield_their_pair_and_stamp() {
        let text = payload(7, "6f1c1d3e-0a3b-4c5d-8e9f-000000000001", 123_456);
        let value = Resp::Array(vec![
            Resp::Bulk(Some(b"message".to_vec())),
            Resp::Bulk(Some(b"unilink-load:bare:r:3".to_vec())),
            Resp::Bulk(Some(text.into_bytes())),
        ]);
        assert_eq!(parse_message(&value, "unilink-load:bare:r:"), Some((3, 123_456, 7)));
        assert_eq!(parse_message(&Resp::Integer(1), "x"), None);
    }
}
