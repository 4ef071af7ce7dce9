//! The HTTP scenarios: `bootstrap` (a real account through the mails of the
//! dev stack), `get` (authenticated GETs) and `auth-mix` (GETs while users
//! log in, to show argon2 does not starve the rest).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::Fail;
use crate::args::Args;
use crate::stats::Samples;

pub fn client() -> Result<reqwest::Client, Fail> {
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
                    samples.push(started.elapsed());
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

pub async fn bootstrap(args: &Args) -> Result<(), Fail> {
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

pub async fn get(args: &Args) -> Result<(), Fail> {
    let seconds = args.seconds(10)?;
    let connections = args.num("connections", 64)?.clamp(1, 4096);
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

pub async fn auth_mix(args: &Args) -> Result<(), Fail> {
    let seconds = args.seconds(10)?;
    let connections = args.num("connections", 64)?.clamp(1, 4096);
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
