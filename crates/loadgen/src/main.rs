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
//! ```
//!
//! Every run is bounded by `--seconds` (at most 300) and refuses any base URL
//! that is not on loopback.

#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

type Fail = Box<dyn std::error::Error + Send + Sync>;

struct Args(HashMap<String, String>);

impl Args {
    fn parse(raw: &[String]) -> Result<Args, Fail> {
        let mut map = HashMap::new();
        let mut it = raw.iter();
        while let Some(key) = it.next() {
            let key = key
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {key:?}"))?;
            let value = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
            map.insert(key.to_owned(), value.clone());
        }
        Ok(Args(map))
    }

    fn get(&self, key: &str) -> Result<&str, Fail> {
        self.0
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| format!("--{key} is required").into())
    }

    fn num(&self, key: &str, default: u64) -> Result<u64, Fail> {
        match self.0.get(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("--{key} must be a number").into()),
        }
    }

    fn base(&self) -> Result<String, Fail> {
        let base = self.get("base")?.trim_end_matches('/').to_owned();
        let host = base
            .strip_prefix("http://")
            .ok_or("--base must be an http:// URL")?
            .split([':', '/'])
            .next()
            .unwrap_or_default();
        if !(host == "localhost" || host == "[::1]" || host.starts_with("127.")) {
            return Err(format!("refusing to load {host}: only loopback targets are allowed").into());
        }
        Ok(base)
    }
}

/// Latency samples in microseconds.
#[derive(Default)]
struct Samples {
    micros: Vec<u64>,
    errors: u64,
}

impl Samples {
    fn merge(&mut self, other: Samples) {
        self.micros.extend(other.micros);
        self.errors += other.errors;
    }

    fn report(&mut self, label: &str, elapsed: Duration) -> u64 {
        self.micros.sort_unstable();
        let n = self.micros.len();
        let pct = |p: f64| -> f64 {
            if n == 0 {
                return 0.0;
            }
            let i = ((p * n as f64).ceil() as usize).clamp(1, n) - 1;
            self.micros[i] as f64 / 1000.0
        };
        let p99 = pct(0.99);
        println!(
            "{label}: {n} ok, {} errors in {:.1}s = {:.0} req/s; latency ms p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}",
            self.errors,
            elapsed.as_secs_f64(),
            n as f64 / elapsed.as_secs_f64(),
            pct(0.50),
            pct(0.90),
            p99,
            pct(1.0),
        );
        (p99 * 1000.0) as u64
    }
}

fn client() -> Result<reqwest::Client, Fail> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(1024)
        .build()?)
}

/// Runs `request` in a loop from `clients` tasks (each with its own
/// keep-alive connection, like k6 VUs) until `stop`; `request` says whether
/// the answer was the expected one.
async fn drive<F, Fut>(clients: u64, stop: Arc<AtomicBool>, request: F) -> Samples
where
    F: Fn(reqwest::Client) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (stop, request) = (stop.clone(), request.clone());
        tasks.push(tokio::spawn(async move {
            let http = client().expect("http client");
            let mut samples = Samples::default();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                if request(http.clone()).await {
                    samples.micros.push(started.elapsed().as_micros() as u64);
                } else {
                    samples.errors += 1;
                }
            }
            samples
        }));
    }
    let mut all = Samples::default();
    for t in tasks {
        if let Ok(s) = t.await {
            all.merge(s);
        }
    }
    all
}

/// Authenticated GETs of `url`.
async fn get_loop(url: String, token: String, connections: u64, stop: Arc<AtomicBool>) -> Samples {
    drive(connections, stop, move |http: reqwest::Client| {
        let (url, token) = (url.clone(), token.clone());
        async move {
            match http.get(&url).bearer_auth(&token).send().await {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            }
        }
    })
    .await
}

/// Logins (password check, code emailed) in a loop.
async fn login_loop(base: String, email: String, password: String, clients: u64, stop: Arc<AtomicBool>) -> Samples {
    let body = serde_json::json!({"email": email, "password": password});
    let url = format!("{base}/auth/login");
    drive(clients, stop, move |http: reqwest::Client| {
        let (url, body) = (url.clone(), body.clone());
        async move {
            http.post(&url)
                .json(&body)
                .send()
                .await
                .is_ok_and(|r| r.status().as_u16() == 202)
        }
    })
    .await
}

async fn timed<F: std::future::Future<Output = Samples>>(
    seconds: u64,
    stop: Arc<AtomicBool>,
    work: F,
) -> (Samples, Duration) {
    let started = Instant::now();
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::Relaxed);
    });
    let samples = work.await;
    let _ = stopper.await;
    (samples, started.elapsed())
}

/// Newest mail in `dir` to `email` that contains `marker`; returns its text.
fn newest_mail(dir: &str, email: &str, marker: &str, after: std::time::SystemTime) -> Option<String> {
    let mut newest: Option<(std::time::SystemTime, String)> = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let modified = entry.metadata().and_then(|m| m.modified()).ok()?;
        if modified < after {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).ok()?;
        let text = text.replace("=\r\n", "").replace("=\n", "").replace("=3D", "=");
        if text.to_lowercase().contains(&email.to_lowercase())
            && text.contains(marker)
            && newest.as_ref().is_none_or(|(t, _)| modified > *t)
        {
            newest = Some((modified, text));
        }
    }
    newest.map(|(_, t)| t)
}

async fn wait_mail(dir: &str, email: &str, marker: &str, after: std::time::SystemTime) -> Result<String, Fail> {
    for _ in 0..200 {
        if let Some(text) = newest_mail(dir, email, marker, after) {
            return Ok(text);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("no mail for {email} appeared in {dir}").into())
}

async fn bootstrap(args: &Args) -> Result<(), Fail> {
    let base = args.base()?;
    let dir = args.get("mail-dir")?;
    let email = args.get("email")?;
    let password = args.get("password")?;
    let username = email.split('@').next().unwrap_or("loaduser").replace(['-', '+'], "_");
    let http = client()?;
    let since = std::time::SystemTime::now() - Duration::from_secs(1);
    let r = http
        .post(format!("{base}/auth/register"))
        .json(
            &serde_json::json!({"email": email, "username": username, "full_name": "Load Test", "password": password}),
        )
        .send()
        .await?;
    if r.status().as_u16() == 200 {
        let text = wait_mail(dir, email, "verify?token=", since).await?;
        let token = text
            .split("verify?token=")
            .nth(1)
            .and_then(|t| {
                t.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                    .next()
            })
            .ok_or("no token in the verification mail")?;
        let r = http
            .post(format!("{base}/auth/verify-email"))
            .json(&serde_json::json!({ "token": token }))
            .send()
            .await?;
        if !r.status().is_success() {
            return Err(format!("verify-email answered {}", r.status()).into());
        }
    }
    let since = std::time::SystemTime::now() - Duration::from_millis(200);
    let r = http
        .post(format!("{base}/auth/login"))
        .json(&serde_json::json!({"email": email, "password": password}))
        .send()
        .await?;
    if r.status().as_u16() != 202 {
        return Err(format!("login answered {}", r.status()).into());
    }
    let text = wait_mail(dir, email, "login code is", since).await?;
    let otp = text
        .split("login code is")
        .nth(1)
        .unwrap_or_default()
        .split(|c: char| !c.is_ascii_digit())
        .find(|w| w.len() == 6)
        .ok_or("no code in the login mail")?
        .to_owned();
    let r = http
        .post(format!("{base}/auth/login/verify-otp"))
        .json(&serde_json::json!({"email": email, "otp": otp}))
        .send()
        .await?;
    let body: serde_json::Value = r.json().await?;
    println!(
        "{}",
        body["access_token"].as_str().ok_or("no access token in the answer")?
    );
    Ok(())
}

async fn run(raw: Vec<String>) -> Result<(), Fail> {
    let (command, rest) = raw
        .split_first()
        .ok_or("usage: unilink-load bootstrap|get|auth-mix --base URL ...")?;
    let args = Args::parse(rest)?;
    let seconds = args.num("seconds", 10)?.clamp(1, 300);
    let connections = args.num("connections", 64)?.clamp(1, 4096);
    match command.as_str() {
        "bootstrap" => bootstrap(&args).await,
        "get" => {
            let url = format!("{}{}", args.base()?, args.get("path")?);
            let stop = Arc::new(AtomicBool::new(false));
            let (mut s, elapsed) = timed(
                seconds,
                stop.clone(),
                get_loop(url, args.get("token")?.to_owned(), connections, stop),
            )
            .await;
            s.report(&format!("GET {} x{connections}", args.get("path")?), elapsed);
            Ok(())
        }
        "auth-mix" => {
            let base = args.base()?;
            let token = args.get("token")?.to_owned();
            let url = format!("{base}/users/me");
            let logins = args.num("logins", 4)?.clamp(1, 256);

            let stop = Arc::new(AtomicBool::new(false));
            let (mut alone, elapsed) = timed(
                seconds,
                stop.clone(),
                get_loop(url.clone(), token.clone(), connections, stop),
            )
            .await;
            let p99_alone = alone.report(&format!("GET /users/me x{connections} alone"), elapsed);

            let stop = Arc::new(AtomicBool::new(false));
            let gets = tokio::spawn(get_loop(url, token, connections, stop.clone()));
            let login = tokio::spawn(login_loop(
                base,
                args.get("email")?.to_owned(),
                args.get("password")?.to_owned(),
                logins,
                stop.clone(),
            ));
            let started = Instant::now();
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            stop.store(true, Ordering::Relaxed);
            let mut mixed = gets.await?;
            let mut login = login.await?;
            let elapsed = started.elapsed();
            let p99_mixed = mixed.report(&format!("GET /users/me x{connections} during logins"), elapsed);
            login.report(&format!("POST /auth/login x{logins} (argon2id)"), elapsed);
            println!(
                "p99 ratio under login load: {:.2}x",
                p99_mixed as f64 / (p99_alone.max(1)) as f64
            );
            Ok(())
        }
        other => Err(format!("unknown command {other:?}").into()),
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
