//! Configuration of every UniLink service, read from environment variables.
//!
//! One loader for the whole fleet: [`Settings::from_env`] in `main`, and
//! [`Settings::from_vars`] in tests (so tests never touch the process
//! environment and can run in parallel). Names follow the original UniLink
//! (`DATABASE_URL`, `SECRET_KEY`, `ALLOWED_ORIGINS`, …); see README.md for the
//! full table with defaults.
//!
//! Every error names the variable it is about. Secrets live in [`Secret`],
//! whose `Debug` and `Display` print `[redacted]`. In production
//! ([`Environment::Production`]) the loader refuses a weak `SECRET_KEY`, a
//! wildcard CORS origin and a missing SMTP server; no secret may still hold
//! a template's `CHANGE-ME` placeholder, and the secrets we generate
//! (`SECRET_KEY`, `EVENT_SEAL_KEYS`, `TURN_SECRET`) must be long and varied
//! enough to have been generated.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

/// A configuration value that must never be printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself. Call only where the value is used, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// What went wrong, always naming the variable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{var} is required but not set")]
    Missing { var: &'static str },
    #[error("{var} is invalid: {reason}")]
    Invalid { var: &'static str, reason: String },
    #[error("{var} is not safe for production: {reason}")]
    Insecure { var: &'static str, reason: String },
}

/// Deployment environment (`ENVIRONMENT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Development,
    Test,
    Staging,
    Production,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Development => "development",
            Environment::Test => "test",
            Environment::Staging => "staging",
            Environment::Production => "production",
        }
    }

    pub fn is_production(self) -> bool {
        self == Environment::Production
    }
}

impl FromStr for Environment {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "development" | "dev" | "local" => Ok(Environment::Development),
            "test" | "testing" | "ci" => Ok(Environment::Test),
            "staging" => Ok(Environment::Staging),
            "production" | "prod" => Ok(Environment::Production),
            other => Err(format!(
                "unknown environment {other:?} (expected development, test, staging or production)"
            )),
        }
    }
}

/// JWT signing algorithm (`ALGORITHM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlgorithm {
    Hs256,
    Rs256,
    EdDsa,
}

impl FromStr for JwtAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_uppercase().as_str() {
            "HS256" => Ok(JwtAlgorithm::Hs256),
            "RS256" => Ok(JwtAlgorithm::Rs256),
            "EDDSA" => Ok(JwtAlgorithm::EdDsa),
            other => Err(format!(
                "unsupported algorithm {other:?} (expected HS256, RS256 or EdDSA)"
            )),
        }
    }
}

/// PostgreSQL connection settings.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// `DATABASE_URL`.
    pub url: Secret,
    /// `DATABASE_READ_URL`: an optional read replica.
    pub read_url: Option<Secret>,
    /// `DATABASE_POOL_SIZE`: connections kept for steady load.
    pub pool_size: usize,
    /// `DATABASE_MAX_OVERFLOW`: extra connections allowed in bursts.
    pub max_overflow: usize,
    /// `DATABASE_CONNECT_TIMEOUT_SECONDS`: connect and checkout deadline.
    pub connect_timeout: Duration,
    /// `DATABASE_STATEMENT_TIMEOUT_MS`: server-side deadline per statement.
    pub statement_timeout: Duration,
}

impl DatabaseSettings {
    /// Largest number of connections the pool opens (steady size plus overflow).
    pub fn max_connections(&self) -> usize {
        self.pool_size + self.max_overflow
    }
}

/// Redis settings.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `REDIS_URL`.
    pub url: Secret,
    /// `REDIS_KEY_PREFIX`: prepended to every key and channel (tests use a unique one).
    pub key_prefix: String,
    /// `REDIS_CA_FILE`: PEM CA that signs the server's certificate under
    /// `rediss://` (the system's roots when unset).
    pub ca_file: Option<std::path::PathBuf>,
    /// `REDIS_SENTINELS`: `host:port` of the Sentinels watching the master
    /// (then `REDIS_URL` gives only the scheme, credentials and database).
    pub sentinels: Vec<(String, u16)>,
    /// `REDIS_SENTINEL_MASTER`: the master's name in Sentinel.
    pub sentinel_master: Option<String>,
    /// `EVENTS_RECLAIM_IDLE_SECONDS`: a stream entry pending this long on
    /// another consumer (one that died mid-event) is taken over (30).
    pub stream_reclaim_idle: Duration,
    /// `EVENTS_MAX_BACKOFF_SECONDS`: the longest wait before a failed event
    /// is handled again (30; the first retry comes after 0.5 s, doubling).
    pub stream_max_backoff: Duration,
}

impl RedisSettings {
    /// A single Redis at `url` (no Sentinel, system roots for `rediss://`).
    pub fn new(url: Secret, key_prefix: impl Into<String>) -> RedisSettings {
        RedisSettings {
            url,
            key_prefix: key_prefix.into(),
            ca_file: None,
            sentinels: Vec::new(),
            sentinel_master: None,
            stream_reclaim_idle: Duration::from_secs(30),
            stream_max_backoff: Duration::from_secs(30),
        }
    }
}

/// Access-token settings.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    /// `SECRET_KEY`: the HS256 signing secret and auth's login-code pepper.
    /// Outside production a development value stands in; in production it
    /// may be unset (only auth needs it, and checks it at start-up).
    pub secret_key: Option<Secret>,
    /// `ALGORITHM`.
    pub algorithm: JwtAlgorithm,
    /// `ACCESS_TOKEN_EXPIRE_MINUTES`.
    pub access_token_ttl: Duration,
    /// `REFRESH_TOKEN_EXPIRE_DAYS`.
    pub refresh_token_ttl: Duration,
    /// `JWT_ISSUER`.
    pub issuer: String,
    /// `JWT_AUDIENCE`.
    pub audience: String,
    /// `JWT_PREVIOUS_SECRET_KEYS`: older HS256 secrets still accepted while
    /// tokens signed with them live (key rotation without logging anyone out).
    pub previous_secret_keys: Vec<Secret>,
    /// `JWT_PRIVATE_KEY_FILE`: PEM signing key for RS256/EdDSA.
    pub private_key_file: Option<std::path::PathBuf>,
    /// `JWT_PUBLIC_KEY_FILE`: PEM public key matching the signing key.
    pub public_key_file: Option<std::path::PathBuf>,
    /// `JWT_PREVIOUS_PUBLIC_KEY_FILES`: older public keys still accepted.
    pub previous_public_key_files: Vec<std::path::PathBuf>,
}

/// How outgoing mail is protected on the way to the SMTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// STARTTLS when the server offers it, plaintext otherwise (development).
    Opportunistic,
    /// STARTTLS or nothing: a server that does not offer it is an error.
    Required,
    /// TLS from the first byte (SMTPS, usually port 465).
    Implicit,
}

impl FromStr for SmtpTls {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "opportunistic" => Ok(SmtpTls::Opportunistic),
            "required" | "starttls" => Ok(SmtpTls::Required),
            "implicit" | "smtps" => Ok(SmtpTls::Implicit),
            other => Err(format!(
                "unsupported mode {other:?} (expected required, implicit or opportunistic)"
            )),
        }
    }
}

/// Outgoing mail settings.
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    /// `SMTP_SERVER`: none means mails are logged and written to `EMAIL_OUTBOX_DIR`.
    pub server: Option<String>,
    /// `SMTP_PORT`.
    pub port: u16,
    /// `SMTP_USER`.
    pub user: Option<String>,
    /// `SMTP_PASSWORD`.
    pub password: Option<Secret>,
    /// `EMAIL_FROM`.
    pub from: String,
    /// `EMAIL_OUTBOX_DIR`: where mails are written when no SMTP server is set
    /// (development only).
    pub outbox_dir: Option<std::path::PathBuf>,
    /// `SMTP_TIMEOUT_SECONDS`: deadline of one SMTP delivery.
    pub timeout: Duration,
    /// `SMTP_TLS`: `required` (STARTTLS), `implicit` (default on port 465)
    /// or `opportunistic` (the development default; refused in production).
    pub tls: SmtpTls,
    /// `EMAIL_MAX_ATTEMPTS`: tries before a mail goes to the dead letters.
    pub max_attempts: u32,
}

/// Logs, traces and error tracking.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    /// `LOG_LEVEL`: a level (`INFO`) or a full filter (`info,tower=warn`).
    pub log_level: String,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub otlp_endpoint: Option<String>,
    /// `SENTRY_DSN`.
    pub sentry_dsn: Option<Secret>,
}

/// Where the other services answer gRPC: each a list of endpoints (several
/// replicas, or one headless-Service DNS name that resolves to all of them).
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// `AUTH_GRPC_URL`.
    pub auth: Vec<String>,
    /// `PROFILE_GRPC_URL`.
    pub profile: Vec<String>,
    /// `SIGNALING_GRPC_URL`.
    pub signaling: Vec<String>,
    /// `NOTIFICATION_GRPC_URL`.
    pub notification: Vec<String>,
    /// `GRPC_CONNECT_TIMEOUT_MS`.
    pub connect_timeout: Duration,
    /// `GRPC_REQUEST_TIMEOUT_MS`: the deadline of every call.
    pub request_timeout: Duration,
}

/// Where this process listens.
#[derive(Debug, Clone)]
pub struct ListenSettings {
    /// `GRPC_ADDR`: the gRPC port of a backend service.
    pub grpc_addr: SocketAddr,
    /// `HTTP_ADDR`: the public port of the gateway, or the metrics/probe port of a backend service.
    pub http_addr: SocketAddr,
    /// `SHUTDOWN_GRACE_SECONDS`: how long in-flight work may take after SIGTERM.
    pub shutdown_grace: Duration,
    /// `HTTP_WORKERS`: HTTP worker threads of the gateway (0 = one per core).
    pub http_workers: usize,
    /// `MAX_SOCKETS`: WebSockets one gateway replica holds at most.
    pub max_sockets: usize,
    /// `WS_PING_INTERVAL_SECONDS`: how often the gateway pings each WebSocket.
    pub ws_ping_interval: Duration,
    /// `WS_IDLE_TIMEOUT_SECONDS`: a WebSocket from which nothing (no frame,
    /// no pong) arrived for this long is closed, and its user goes offline.
    pub ws_idle_timeout: Duration,
    /// `WS_REBALANCE_*`: how a gateway replica holding more than its share
    /// of the fleet's sockets (after a scale-up) asks some to reconnect.
    pub ws_rebalance: RebalanceSettings,
}

/// Socket rebalancing between gateway replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebalanceSettings {
    /// `WS_REBALANCE_INTERVAL_SECONDS`: how often a replica compares its
    /// sockets with the fleet's average (0: never).
    pub interval: Duration,
    /// `WS_REBALANCE_MARGIN_PERCENT`: how far above the average a replica
    /// must be before it asks sockets to move.
    pub margin_percent: u32,
    /// `WS_REBALANCE_MAX_PERCENT`: the largest share of its sockets a
    /// replica asks to reconnect in one interval.
    pub max_percent: u32,
}

/// Calls and WebRTC signaling.
#[derive(Debug, Clone)]
pub struct CallSettings {
    /// `CALL_RING_TIMEOUT` (seconds): an unanswered call becomes `missed`.
    pub ring_timeout: Duration,
    /// `CALL_MAX_DURATION` (seconds): an ongoing call is ended after this long.
    pub max_duration: Duration,
    /// `CALL_DISCONNECT_GRACE` (seconds): an ongoing call whose participants
    /// have both been disconnected this long is ended.
    pub disconnect_grace: Duration,
    /// `SIGNALING_FRAME_RATE`: frames per second a signaling socket may send
    /// (bursts up to the same number); beyond it frames are refused, and a
    /// client that keeps going is disconnected.
    pub frame_rate: u32,
    /// `STUN_URLS`: STUN servers handed to clients.
    pub stun_urls: Vec<String>,
    /// `TURN_URLS`: TURN servers (coturn with `use-auth-secret`).
    pub turn_urls: Vec<String>,
    /// `TURN_SECRET`: the shared secret of the TURN REST credentials.
    pub turn_secret: Option<Secret>,
    /// `TURN_TTL` (seconds): lifetime of TURN credentials.
    pub turn_ttl: Duration,
}

/// Everything a UniLink process may need.
#[derive(Debug, Clone)]
pub struct Settings {
    pub environment: Environment,
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub jwt: JwtSettings,
    pub smtp: SmtpSettings,
    /// `BACKEND_URL`.
    pub backend_url: String,
    /// `FRONTEND_URL`.
    pub frontend_url: String,
    /// `ALLOWED_ORIGINS`: JSON list or comma list; `https://*.example.dev` allows subdomains.
    pub allowed_origins: Vec<String>,
    /// `RATE_LIMIT_AUTH`: requests per minute per (email, client address)
    /// on login, login-code verification and resend-verification.
    pub rate_limit_auth: u32,
    /// `RATE_LIMIT_AUTH_ADDRESS`: requests per minute per client address on
    /// `/auth/*` whatever the email (a campus NAT's logins and sign-ups).
    pub rate_limit_auth_address: u32,
    /// `RATE_LIMIT_API`: requests per minute per user elsewhere.
    pub rate_limit_api: u32,
    /// `RATE_LIMIT_WINDOW_SECONDS`: the length of a rate-limit window (60:
    /// the limits above are per minute). Windows are aligned to multiples
    /// of it since the Unix epoch.
    pub rate_limit_window: Duration,
    /// `OTP_LOCK_SECONDS`: the first lockout after five wrong login codes
    /// (it doubles at every further five, up to 15 minutes).
    pub otp_lock: Duration,
    /// `JWT_KEYS_REFRESH_SECONDS`: how often the gateway fetches the
    /// verification keys from auth again (a retired key stops being trusted
    /// within this).
    pub jwt_keys_refresh: Duration,
    /// `EVENT_SEAL_KEYS`: base64 32-byte keys that seal login codes and
    /// verification tokens in events for notification (the first seals, all
    /// open). Only auth and notification need them; outside production a
    /// development key stands in.
    pub event_seal_keys: Vec<Secret>,
    /// `MAX_SOCKETS_PER_USER`: WebSockets (presence and call) one user may
    /// hold open at once, across every gateway replica.
    pub max_sockets_per_user: u32,
    /// `ALLOWED_EMAIL_DOMAINS`: lower-cased.
    pub allowed_email_domains: Vec<String>,
    /// `TRUSTED_PROXIES`: addresses or CIDR ranges whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<String>,
    pub telemetry: TelemetrySettings,
    pub upstreams: UpstreamSettings,
    pub listen: ListenSettings,
    pub calls: CallSettings,
}

/// Where variables come from.
trait Source {
    fn get(&self, key: &str) -> Option<String>;
}

struct ProcessEnv;

impl Source for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl Source for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }
}

/// Reads typed values; an empty value counts as unset.
struct Reader<'a>(&'a dyn Source);

impl Reader<'_> {
    fn opt(&self, var: &'static str) -> Option<String> {
        self.0.get(var).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
    }

    fn string(&self, var: &'static str, default: &str) -> String {
        self.opt(var).unwrap_or_else(|| default.to_owned())
    }

    fn parse<T: FromStr>(&self, var: &'static str, default: T) -> Result<T, ConfigError>
    where
        T::Err: fmt::Display,
    {
        match self.opt(var) {
            None => Ok(default),
            Some(raw) => raw.parse().map_err(|e: T::Err| ConfigError::Invalid {
                var,
                reason: format!("{raw:?}: {e}"),
            }),
        }
    }

    fn bounded<T>(&self, var: &'static str, default: T, min: T, max: T) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + fmt::Display + Copy,
        T::Err: fmt::Display,
    {
        let value = self.parse(var, default)?;
        if value < min || value > max {
            return Err(ConfigError::Invalid {
                var,
                reason: format!("{value} is outside {min}..={max}"),
            });
        }
        Ok(value)
    }

    fn millis(&self, var: &'static str, default: u64, min: u64, max: u64) -> Result<Duration, ConfigError> {
        self.bounded(var, default, min, max).map(Duration::from_millis)
    }

    fn url(&self, var: &'static str, default: &str, schemes: &[&str]) -> Result<String, ConfigError> {
        let value = self.string(var, default);
        check_url(var, &value, schemes)?;
        Ok(value)
    }

    fn flag(&self, var: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.opt(var).map(|v| v.to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) if matches!(v.as_str(), "true" | "1" | "yes" | "on") => Ok(true),
            Some(v) if matches!(v.as_str(), "false" | "0" | "no" | "off") => Ok(false),
            Some(v) => Err(ConfigError::Invalid {
                var,
                reason: format!("{v:?} is not true or false"),
            }),
        }
    }

    fn list(&self, var: &'static str, default: &[&str]) -> Result<Vec<String>, ConfigError> {
        match self.opt(var) {
            None => Ok(default.iter().map(|s| (*s).to_owned()).collect()),
            Some(raw) => parse_list(var, &raw),
        }
    }
}

fn check_url(var: &'static str, value: &str, schemes: &[&str]) -> Result<(), ConfigError> {
    let scheme_ok = schemes
        .iter()
        .any(|s| value.len() > s.len() + 3 && value.starts_with(&format!("{s}://")));
    if !scheme_ok {
        return Err(ConfigError::Invalid {
            var,
            reason: format!("expected a URL starting with {}", schemes.join(":// or ") + "://"),
        });
    }
    Ok(())
}

/// `host:port` (`[v6]:port` too).
fn host_port(entry: &str) -> Option<(String, u16)> {
    let (host, port) = entry.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host.to_owned(), port.parse().ok()?))
}

/// The value of query parameter `name` of `url`.
fn url_param(url: &str, name: &str) -> Option<String> {
    let (_, query) = url.split_once('?')?;
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

/// The host part of `scheme://user:pass@host:port/…` (hosts, comma-separated).
fn url_host(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let hosts = authority.rsplit_once('@').map_or(authority, |(_, hosts)| hosts);
    hosts
        .split(',')
        .map(|h| {
            if let Some(v6) = h.strip_prefix('[') {
                v6.split(']').next().unwrap_or("").to_owned()
            } else {
                h.split(':').next().unwrap_or("").to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether every host of a comma list is this machine (or a Unix socket).
fn host_is_local(hosts: &str) -> bool {
    hosts.split(',').all(|host| {
        let host = percent_unescape_slashes(host);
        host.is_empty()
            || host == "localhost"
            || host.starts_with('/')
            || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    })
}

fn percent_unescape_slashes(host: &str) -> String {
    host.replace("%2F", "/").replace("%2f", "/")
}

/// Whether a PostgreSQL URL points at this machine (its host, or a
/// `host=` parameter naming a Unix socket directory).
fn postgres_is_local(url: &str) -> bool {
    match url_param(url, "host") {
        Some(host) => host_is_local(&host),
        None => host_is_local(&url_host(url)),
    }
}

/// A JSON list (`["a", "b"]`) or a comma list (`a,b`), entries trimmed, empties dropped.
fn parse_list(var: &'static str, raw: &str) -> Result<Vec<String>, ConfigError> {
    let items: Vec<String> = if raw.starts_with('[') {
        serde_json::from_str::<Vec<String>>(raw).map_err(|e| ConfigError::Invalid {
            var,
            reason: format!("not a JSON list of strings: {e}"),
        })?
    } else {
        raw.split(',').map(str::to_owned).collect()
    };
    Ok(items
        .into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect())
}

/// Development secret used when `SECRET_KEY` is unset outside production.
const DEV_SECRET_KEY: &str = "unilink-development-secret-key-not-for-production";
/// Development key for `EVENT_SEAL_KEYS` (32 bytes, base64); refused in production.
pub const DEV_EVENT_SEAL_KEY: &str = "dW5pbGluay1kZXZlbG9wbWVudC1ldmVudC1zZWFsISE=";
/// Shortest `SECRET_KEY` accepted in production (the seed's rule: 32+ characters).
pub const MIN_SECRET_KEY_LEN: usize = 32;
/// Fewest distinct characters a generated secret (`SECRET_KEY`,
/// `EVENT_SEAL_KEYS`, `TURN_SECRET`) may have in production: any random
/// token of 16+ characters has far more; `aaaa…`, `passwordpassword…` or a
/// repeated word do not.
pub const MIN_SECRET_DISTINCT_CHARS: usize = 10;
/// Shortest `TURN_SECRET` accepted in production.
pub const MIN_TURN_SECRET_LEN: usize = 16;

/// Whether `value` still holds a template placeholder (`CHANGE-ME-…`,
/// `changeme`, `change_me`), in any case.
fn is_placeholder(value: &str) -> bool {
    let lower = value.to_ascii_lowercase();
    ["change-me", "changeme", "change_me"]
        .iter()
        .any(|marker| lower.contains(marker))
}

/// Production rules for a secret: never a placeholder; a generated one
/// (`min_len` given) also long and varied enough. The message never
/// repeats the value.
fn check_production_secret(var: &'static str, value: &str, min_len: Option<usize>) -> Result<(), ConfigError> {
    if is_placeholder(value) {
        return Err(ConfigError::Insecure {
            var,
            reason: "it still holds a CHANGE-ME placeholder from a template; set the real value".to_owned(),
        });
    }
    let Some(min_len) = min_len else {
        return Ok(());
    };
    let length = value.chars().count();
    if length < min_len {
        return Err(ConfigError::Insecure {
            var,
            reason: format!("it has {length} characters; use at least {min_len} random characters"),
        });
    }
    let distinct = value.chars().collect::<std::collections::HashSet<_>>().len();
    if distinct < MIN_SECRET_DISTINCT_CHARS {
        return Err(ConfigError::Insecure {
            var,
            reason: format!(
                "it uses only {distinct} distinct characters (at least {MIN_SECRET_DISTINCT_CHARS}); \
                 generate it, e.g. `openssl rand -base64 32`"
            ),
        });
    }
    Ok(())
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Settings, ConfigError> {
        Self::load(&ProcessEnv)
    }

    /// Reads the given variables only (tests).
    pub fn from_vars<K, V>(vars: impl IntoIterator<Item = (K, V)>) -> Result<Settings, ConfigError>
    where
        K: Into<String>,
        V: Into<String>,
    {
        let map: HashMap<String, String> = vars.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        Self::load(&map)
    }

    fn load(source: &dyn Source) -> Result<Settings, ConfigError> {
        let r = Reader(source);
        let environment: Environment = r.parse("ENVIRONMENT", Environment::Development)?;

        let database = DatabaseSettings {
            url: Secret::new(r.url(
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/unilink",
                &["postgres", "postgresql"],
            )?),
            read_url: match r.opt("DATABASE_READ_URL") {
                Some(url) => {
                    check_url("DATABASE_READ_URL", &url, &["postgres", "postgresql"])?;
                    Some(Secret::new(url))
                }
                None => None,
            },
            pool_size: r.bounded("DATABASE_POOL_SIZE", 20, 1, 1000)?,
            max_overflow: r.bounded("DATABASE_MAX_OVERFLOW", 40, 0, 1000)?,
            connect_timeout: Duration::from_secs(r.bounded("DATABASE_CONNECT_TIMEOUT_SECONDS", 5, 1, 120)?),
            statement_timeout: r.millis("DATABASE_STATEMENT_TIMEOUT_MS", 10_000, 100, 600_000)?,
        };

        let redis = RedisSettings {
            url: Secret::new(r.url("REDIS_URL", "redis://127.0.0.1:6379", &["redis", "rediss"])?),
            key_prefix: r.string("REDIS_KEY_PREFIX", "unilink:"),
            ca_file: r.opt("REDIS_CA_FILE").map(std::path::PathBuf::from),
            sentinels: r
                .list("REDIS_SENTINELS", &[])?
                .iter()
                .map(|entry| {
                    host_port(entry).ok_or_else(|| ConfigError::Invalid {
                        var: "REDIS_SENTINELS",
                        reason: format!("{entry:?} is not host:port"),
                    })
                })
                .collect::<Result<_, _>>()?,
            sentinel_master: r.opt("REDIS_SENTINEL_MASTER"),
            stream_reclaim_idle: Duration::from_secs(r.bounded("EVENTS_RECLAIM_IDLE_SECONDS", 30, 1, 3600)?),
            stream_max_backoff: Duration::from_secs(r.bounded("EVENTS_MAX_BACKOFF_SECONDS", 30, 1, 3600)?),
        };
        if !redis.sentinels.is_empty() && redis.sentinel_master.is_none() {
            return Err(ConfigError::Missing {
                var: "REDIS_SENTINEL_MASTER",
            });
        }
        if environment.is_production() {
            for (var, url) in std::iter::once(("DATABASE_URL", &database.url))
                .chain(database.read_url.iter().map(|u| ("DATABASE_READ_URL", u)))
            {
                let mode = url_param(url.expose(), "sslmode").unwrap_or_else(|| "prefer".to_owned());
                let encrypted = matches!(mode.as_str(), "require" | "verify-ca" | "verify-full");
                if !encrypted && !postgres_is_local(url.expose()) && !r.flag("DATABASE_ALLOW_PLAINTEXT", false)? {
                    return Err(ConfigError::Insecure {
                        var,
                        reason: format!(
                            "sslmode={mode} to a database on the network may travel in plaintext; use \
                             sslmode=verify-full (or require) or set DATABASE_ALLOW_PLAINTEXT=true"
                        ),
                    });
                }
            }
            let url = redis.url.expose();
            let hosts_local = if redis.sentinels.is_empty() {
                host_is_local(&url_host(url))
            } else {
                redis.sentinels.iter().all(|(host, _)| host_is_local(host))
            };
            if url.starts_with("redis://") && !hosts_local && !r.flag("REDIS_ALLOW_PLAINTEXT", false)? {
                return Err(ConfigError::Insecure {
                    var: "REDIS_URL",
                    reason: "redis:// to a server on the network is plaintext; use rediss:// or set \
                             REDIS_ALLOW_PLAINTEXT=true"
                        .to_owned(),
                });
            }
        }

        // Production signs with EdDSA unless told otherwise: with HS256 the
        // gateway would have to hold the secret that mints tokens.
        let default_algorithm = if environment.is_production() {
            JwtAlgorithm::EdDsa
        } else {
            JwtAlgorithm::Hs256
        };
        let algorithm: JwtAlgorithm = r.parse("ALGORITHM", default_algorithm)?;
        if environment.is_production() && algorithm == JwtAlgorithm::Hs256 && !r.flag("JWT_ALLOW_HS256", false)? {
            return Err(ConfigError::Insecure {
                var: "ALGORITHM",
                reason: "HS256 hands the signing secret to every gateway; use EdDSA (JWT_PRIVATE_KEY_FILE, \
                         JWT_PUBLIC_KEY_FILE) or set JWT_ALLOW_HS256=true to accept that"
                    .to_owned(),
            });
        }
        let secret_key = match r.opt("SECRET_KEY") {
            Some(key) => Some(key),
            None if environment.is_production() && algorithm == JwtAlgorithm::Hs256 => {
                return Err(ConfigError::Missing { var: "SECRET_KEY" });
            }
            None if environment.is_production() => None,
            None => Some(DEV_SECRET_KEY.to_owned()),
        };
        if let (true, Some(secret_key)) = (environment.is_production(), &secret_key) {
            check_production_secret("SECRET_KEY", secret_key, Some(MIN_SECRET_KEY_LEN))?;
            if secret_key == DEV_SECRET_KEY {
                return Err(ConfigError::Insecure {
                    var: "SECRET_KEY",
                    reason: "it is the published development key".to_owned(),
                });
            }
        }
        let jwt = JwtSettings {
            secret_key: secret_key.map(Secret::new),
            algorithm,
            access_token_ttl: Duration::from_secs(60 * r.bounded("ACCESS_TOKEN_EXPIRE_MINUTES", 30u64, 1, 24 * 60)?),
            refresh_token_ttl: Duration::from_secs(24 * 3600 * r.bounded("REFRESH_TOKEN_EXPIRE_DAYS", 30u64, 1, 365)?),
            issuer: r.string("JWT_ISSUER", "unilink-auth"),
            audience: r.string("JWT_AUDIENCE", "unilink-api"),
            previous_secret_keys: r
                .list("JWT_PREVIOUS_SECRET_KEYS", &[])?
                .into_iter()
                .map(Secret::new)
                .collect(),
            private_key_file: r.opt("JWT_PRIVATE_KEY_FILE").map(std::path::PathBuf::from),
            public_key_file: r.opt("JWT_PUBLIC_KEY_FILE").map(std::path::PathBuf::from),
            previous_public_key_files: r
                .list("JWT_PREVIOUS_PUBLIC_KEY_FILES", &[])?
                .into_iter()
                .map(std::path::PathBuf::from)
                .collect(),
        };
        // The key files are auth's alone (other services fetch public keys
        // from it): auth checks them when it loads its signing keys.

        let smtp_port: u16 = r.bounded("SMTP_PORT", 587, 1, 65535)?;
        let smtp = SmtpSettings {
            server: r.opt("SMTP_SERVER"),
            port: smtp_port,
            user: r.opt("SMTP_USER"),
            password: r.opt("SMTP_PASSWORD").map(Secret::new),
            from: r.string("EMAIL_FROM", "noreply@unilink.app"),
            outbox_dir: r.opt("EMAIL_OUTBOX_DIR").map(std::path::PathBuf::from),
            timeout: Duration::from_secs(r.bounded("SMTP_TIMEOUT_SECONDS", 10, 1, 300)?),
            tls: {
                let default = if smtp_port == 465 {
                    SmtpTls::Implicit
                } else if environment.is_production() {
                    SmtpTls::Required
                } else {
                    SmtpTls::Opportunistic
                };
                r.parse("SMTP_TLS", default)?
            },
            max_attempts: r.bounded("EMAIL_MAX_ATTEMPTS", 20, 1, 1000)?,
        };
        if environment.is_production() && smtp.tls == SmtpTls::Opportunistic {
            return Err(ConfigError::Insecure {
                var: "SMTP_TLS",
                reason: "opportunistic TLS falls back to plaintext; use required or implicit".to_owned(),
            });
        }
        if !smtp.from.contains('@') {
            return Err(ConfigError::Invalid {
                var: "EMAIL_FROM",
                reason: format!("{:?} is not an email address", smtp.from),
            });
        }
        if environment.is_production() && smtp.server.is_none() {
            return Err(ConfigError::Insecure {
                var: "SMTP_SERVER",
                reason: "production needs a real SMTP server; mails would only be logged".to_owned(),
            });
        }

        let allowed_origins = r.list(
            "ALLOWED_ORIGINS",
            &[
                "http://localhost:5173",
                "http://localhost:3000",
                "http://127.0.0.1:8000",
            ],
        )?;
        for origin in &allowed_origins {
            if origin == "*" {
                if environment.is_production() {
                    return Err(ConfigError::Insecure {
                        var: "ALLOWED_ORIGINS",
                        reason: "a wildcard origin (*) lets any site call the API; list the frontend's origins"
                            .to_owned(),
                    });
                }
                continue;
            }
            check_url("ALLOWED_ORIGINS", origin, &["http", "https"])?;
        }

        let allowed_email_domains: Vec<String> = r
            .list("ALLOWED_EMAIL_DOMAINS", &["kiit.ac.in"])?
            .into_iter()
            .map(|d| d.trim_start_matches('@').to_ascii_lowercase())
            .collect();
        if allowed_email_domains.is_empty() {
            return Err(ConfigError::Invalid {
                var: "ALLOWED_EMAIL_DOMAINS",
                reason: "at least one domain is needed".to_owned(),
            });
        }
        if let Some(bad) = allowed_email_domains
            .iter()
            .find(|d| !d.contains('.') || d.contains(|c: char| c.is_whitespace() || c == '@'))
        {
            return Err(ConfigError::Invalid {
                var: "ALLOWED_EMAIL_DOMAINS",
                reason: format!("{bad:?} is not a domain"),
            });
        }

        let telemetry = TelemetrySettings {
            log_level: r.string("LOG_LEVEL", "info"),
            otlp_endpoint: match r.opt("OTEL_EXPORTER_OTLP_ENDPOINT") {
                Some(url) => {
                    check_url("OTEL_EXPORTER_OTLP_ENDPOINT", &url, &["http", "https"])?;
                    Some(url)
                }
                None => None,
            },
            sentry_dsn: r.opt("SENTRY_DSN").map(Secret::new),
        };

        let upstreams = UpstreamSettings {
            auth: endpoints(&r, "AUTH_GRPC_URL", "http://127.0.0.1:50051")?,
            profile: endpoints(&r, "PROFILE_GRPC_URL", "http://127.0.0.1:50052")?,
            signaling: endpoints(&r, "SIGNALING_GRPC_URL", "http://127.0.0.1:50053")?,
            notification: endpoints(&r, "NOTIFICATION_GRPC_URL", "http://127.0.0.1:50054")?,
            connect_timeout: r.millis("GRPC_CONNECT_TIMEOUT_MS", 1_000, 10, 60_000)?,
            request_timeout: r.millis("GRPC_REQUEST_TIMEOUT_MS", 5_000, 10, 300_000)?,
        };

        let listen = ListenSettings {
            grpc_addr: r.parse("GRPC_ADDR", SocketAddr::from(([0, 0, 0, 0], 50051)))?,
            http_addr: r.parse("HTTP_ADDR", SocketAddr::from(([0, 0, 0, 0], 8000)))?,
            shutdown_grace: Duration::from_secs(r.bounded("SHUTDOWN_GRACE_SECONDS", 20, 0, 3600)?),
            http_workers: r.bounded("HTTP_WORKERS", 0, 0, 256)?,
            max_sockets: r.bounded("MAX_SOCKETS", 50_000, 1, 1_000_000)?,
            ws_ping_interval: Duration::from_secs(r.bounded("WS_PING_INTERVAL_SECONDS", 20, 1, 600)?),
            ws_idle_timeout: Duration::from_secs(r.bounded("WS_IDLE_TIMEOUT_SECONDS", 45, 2, 3600)?),
            ws_rebalance: RebalanceSettings {
                interval: Duration::from_secs(r.bounded("WS_REBALANCE_INTERVAL_SECONDS", 30, 0, 3600)?),
                margin_percent: r.bounded("WS_REBALANCE_MARGIN_PERCENT", 20, 1, 1000)?,
                max_percent: r.bounded("WS_REBALANCE_MAX_PERCENT", 5, 1, 100)?,
            },
        };
        if listen.ws_idle_timeout <= listen.ws_ping_interval {
            return Err(ConfigError::Invalid {
                var: "WS_IDLE_TIMEOUT_SECONDS",
                reason: format!(
                    "{}s must be longer than WS_PING_INTERVAL_SECONDS ({}s), or a live client is closed before it is pinged",
                    listen.ws_idle_timeout.as_secs(),
                    listen.ws_ping_interval.as_secs()
                ),
            });
        }

        let calls = CallSettings {
            ring_timeout: Duration::from_secs(r.bounded("CALL_RING_TIMEOUT", 30, 1, 600)?),
            max_duration: Duration::from_secs(r.bounded("CALL_MAX_DURATION", 15 * 60, 10, 24 * 3600)?),
            disconnect_grace: Duration::from_secs(r.bounded("CALL_DISCONNECT_GRACE", 60, 5, 3600)?),
            frame_rate: r.bounded("SIGNALING_FRAME_RATE", 50, 1, 100_000)?,
            stun_urls: r.list("STUN_URLS", &["stun:stun.l.google.com:19302"])?,
            turn_urls: r.list("TURN_URLS", &[])?,
            turn_secret: r.opt("TURN_SECRET").map(Secret::new),
            turn_ttl: Duration::from_secs(r.bounded("TURN_TTL", 3600, 60, 7 * 24 * 3600)?),
        };
        for url in calls.stun_urls.iter().chain(&calls.turn_urls) {
            let scheme_ok = ["stun:", "stuns:", "turn:", "turns:"]
                .iter()
                .any(|s| url.starts_with(s));
            if !scheme_ok {
                return Err(ConfigError::Invalid {
                    var: if calls.stun_urls.contains(url) {
                        "STUN_URLS"
                    } else {
                        "TURN_URLS"
                    },
                    reason: format!("{url:?} is not a stun:, stuns:, turn: or turns: URL"),
                });
            }
        }
        if !calls.turn_urls.is_empty() && calls.turn_secret.is_none() {
            return Err(ConfigError::Missing { var: "TURN_SECRET" });
        }

        if environment.is_production() {
            // Template placeholders (deploy/.env.example, the Secret
            // template) must never reach production, whatever the variable;
            // the secrets we generate must also look generated.
            if let Some(secret) = &calls.turn_secret {
                check_production_secret("TURN_SECRET", secret.expose(), Some(MIN_TURN_SECRET_LEN))?;
            }
            let plain: [(&'static str, Option<&Secret>); 5] = [
                ("DATABASE_URL", Some(&database.url)),
                ("DATABASE_READ_URL", database.read_url.as_ref()),
                ("REDIS_URL", Some(&redis.url)),
                ("SMTP_PASSWORD", smtp.password.as_ref()),
                ("SENTRY_DSN", telemetry.sentry_dsn.as_ref()),
            ];
            for (var, secret) in plain {
                if let Some(secret) = secret {
                    check_production_secret(var, secret.expose(), None)?;
                }
            }
            for previous in &jwt.previous_secret_keys {
                check_production_secret("JWT_PREVIOUS_SECRET_KEYS", previous.expose(), None)?;
            }
        }

        Ok(Settings {
            environment,
            database,
            redis,
            jwt,
            smtp,
            backend_url: r.url("BACKEND_URL", "http://127.0.0.1:8000", &["http", "https"])?,
            frontend_url: r.url("FRONTEND_URL", "http://localhost:3000", &["http", "https"])?,
            allowed_origins,
            rate_limit_auth: r.bounded("RATE_LIMIT_AUTH", 10, 1, 1_000_000)?,
            rate_limit_auth_address: r.bounded("RATE_LIMIT_AUTH_ADDRESS", 300, 1, 1_000_000)?,
            rate_limit_api: r.bounded("RATE_LIMIT_API", 60, 1, 1_000_000)?,
            rate_limit_window: Duration::from_secs(r.bounded("RATE_LIMIT_WINDOW_SECONDS", 60, 1, 86_400)?),
            otp_lock: Duration::from_secs(r.bounded("OTP_LOCK_SECONDS", 30, 1, 3600)?),
            event_seal_keys: {
                let keys = r.list("EVENT_SEAL_KEYS", &[])?;
                if keys.is_empty() && !environment.is_production() {
                    vec![Secret::new(DEV_EVENT_SEAL_KEY)]
                } else if environment.is_production() && keys.iter().any(|k| k == DEV_EVENT_SEAL_KEY) {
                    return Err(ConfigError::Insecure {
                        var: "EVENT_SEAL_KEYS",
                        reason: "it holds the published development key".to_owned(),
                    });
                } else {
                    if environment.is_production() {
                        for key in &keys {
                            // 32 random bytes in base64 are 44 characters.
                            check_production_secret("EVENT_SEAL_KEYS", key, Some(MIN_SECRET_KEY_LEN))?;
                        }
                    }
                    keys.into_iter().map(Secret::new).collect()
                }
            },
            jwt_keys_refresh: Duration::from_secs(r.bounded("JWT_KEYS_REFRESH_SECONDS", 300, 1, 86_400)?),
            max_sockets_per_user: r.bounded("MAX_SOCKETS_PER_USER", 10, 1, 10_000)?,
            allowed_email_domains,
            trusted_proxies: r.list("TRUSTED_PROXIES", &[])?,
            telemetry,
            upstreams,
            listen,
            calls,
        })
    }
}

fn endpoints(r: &Reader<'_>, var: &'static str, default: &str) -> Result<Vec<String>, ConfigError> {
    let list = r.list(var, &[default])?;
    if list.is_empty() {
        return Err(ConfigError::Invalid {
            var,
            reason: "at least one endpoint is needed".to_owned(),
        });
    }
    for url in &list {
        check_url(var, url, &["http", "https"])?;
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::from_vars(vars.iter().copied())
    }

    #[test]
    fn defaults_need_no_variables_outside_production() {
        let s = load(&[]).unwrap();
        assert_eq!(s.environment, Environment::Development);
        assert_eq!(s.database.pool_size, 20);
        assert_eq!(s.database.max_connections(), 60);
        assert_eq!(s.jwt.algorithm, JwtAlgorithm::Hs256);
        assert_eq!(s.jwt.access_token_ttl, Duration::from_secs(30 * 60));
        assert_eq!(s.allowed_email_domains, vec!["kiit.ac.in"]);
        assert_eq!(s.rate_limit_auth, 10);
        assert_eq!(s.rate_limit_auth_address, 300);
        assert_eq!(s.rate_limit_api, 60);
        assert_eq!(s.rate_limit_window, Duration::from_secs(60));
        assert!(s.smtp.server.is_none());
        assert_eq!(s.calls.ring_timeout, Duration::from_secs(30));
        assert_eq!(s.calls.max_duration, Duration::from_secs(15 * 60));
        assert_eq!(s.calls.frame_rate, 50);
        assert!(s.calls.turn_urls.is_empty());
        // Where the original web client's dev server runs.
        assert_eq!(s.frontend_url, "http://localhost:3000");
    }

    #[test]
    fn turn_servers_need_a_secret_and_real_urls() {
        let err = load(&[("TURN_URLS", "turn:turn.example.com:3478")]).unwrap_err();
        assert!(err.to_string().contains("TURN_SECRET"), "{err}");
        let err = load(&[("STUN_URLS", "http://stun.example.com")]).unwrap_err();
        assert!(err.to_string().contains("STUN_URLS"), "{err}");
        let s = load(&[
            (
                "TURN_URLS",
                "turn:turn.example.com:3478?transport=udp,turns:turn.example.com:5349",
            ),
            ("TURN_SECRET", "s3cret"),
            ("TURN_TTL", "600"),
            ("CALL_RING_TIMEOUT", "2"),
        ])
        .unwrap();
        assert_eq!(s.calls.turn_urls.len(), 2);
        assert_eq!(s.calls.turn_ttl, Duration::from_secs(600));
        assert_eq!(s.calls.ring_timeout, Duration::from_secs(2));
    }

    #[test]
    fn reads_the_seed_variables() {
        let s = load(&[
            ("DATABASE_URL", "postgresql://u:p@db:5432/unilink"),
            ("DATABASE_POOL_SIZE", "5"),
            ("DATABASE_MAX_OVERFLOW", "2"),
            ("ACCESS_TOKEN_EXPIRE_MINUTES", "15"),
            (
                "ALLOWED_ORIGINS",
                r#"["https://unilink.app", "https://www.unilink.app"]"#,
            ),
            ("ALLOWED_EMAIL_DOMAINS", "KIIT.ac.in, @iitb.ac.in"),
            ("AUTH_GRPC_URL", "http://10.0.0.1:50051,http://10.0.0.2:50051"),
            ("RATE_LIMIT_AUTH", "5"),
            ("SMTP_SERVER", "smtp.example.com"),
            ("SMTP_PORT", "2525"),
        ])
        .unwrap();
        assert_eq!(s.database.url.expose(), "postgresql://u:p@db:5432/unilink");
        assert_eq!(s.database.max_connections(), 7);
        assert_eq!(s.jwt.access_token_ttl, Duration::from_secs(900));
        assert_eq!(
            s.allowed_origins,
            vec!["https://unilink.app", "https://www.unilink.app"]
        );
        assert_eq!(s.allowed_email_domains, vec!["kiit.ac.in", "iitb.ac.in"]);
        assert_eq!(s.upstreams.auth.len(), 2);
        assert_eq!(s.rate_limit_auth, 5);
        assert_eq!(s.smtp.server.as_deref(), Some("smtp.example.com"));
        assert_eq!(s.smtp.port, 2525);
    }

    #[test]
    fn comma_list_origins_are_accepted() {
        let s = load(&[("ALLOWED_ORIGINS", "https://a.dev, https://*.b.pages.dev")]).unwrap();
        assert_eq!(s.allowed_origins, vec!["https://a.dev", "https://*.b.pages.dev"]);
    }

    #[test]
    fn sockets_per_user_are_capped_at_ten_unless_configured() {
        assert_eq!(load(&[]).unwrap().max_sockets_per_user, 10);
        assert_eq!(load(&[]).unwrap().listen.max_sockets, 50_000);
        assert_eq!(load(&[("MAX_SOCKETS", "2")]).unwrap().listen.max_sockets, 2);
        // Silent sockets: pinged every 20 s, closed after 45 s without a word,
        // so a frozen client is offline within 65 s (under the promised 75).
        let listen = load(&[]).unwrap().listen;
        assert_eq!(listen.ws_ping_interval, Duration::from_secs(20));
        assert_eq!(listen.ws_idle_timeout, Duration::from_secs(45));
        let err = load(&[("WS_PING_INTERVAL_SECONDS", "30"), ("WS_IDLE_TIMEOUT_SECONDS", "30")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("WS_IDLE_TIMEOUT_SECONDS"), "{err}");
        let err = load(&[("MAX_SOCKETS", "0")]).unwrap_err().to_string();
        assert!(err.contains("MAX_SOCKETS is invalid"), "{err}");
        assert_eq!(load(&[("MAX_SOCKETS_PER_USER", "3")]).unwrap().max_sockets_per_user, 3);
        let err = load(&[("MAX_SOCKETS_PER_USER", "0")]).unwrap_err().to_string();
        assert!(err.contains("MAX_SOCKETS_PER_USER is invalid"), "{err}");
        let err = load(&[("MAX_SOCKETS_PER_USER", "many")]).unwrap_err().to_string();
        assert!(err.contains("MAX_SOCKETS_PER_USER is invalid"), "{err}");
    }

    #[test]
    fn sockets_are_rebalanced_gently_unless_configured() {
        // Every 30 s, above the fleet's average by more than 20 %, at most
        // 5 % of a replica's sockets per interval (10 % a minute).
        let rebalance = load(&[]).unwrap().listen.ws_rebalance;
        assert_eq!(
            rebalance,
            RebalanceSettings {
                interval: Duration::from_secs(30),
                margin_percent: 20,
                max_percent: 5,
            }
        );
        let rebalance = load(&[
            ("WS_REBALANCE_INTERVAL_SECONDS", "0"),
            ("WS_REBALANCE_MARGIN_PERCENT", "10"),
            ("WS_REBALANCE_MAX_PERCENT", "25"),
        ])
        .unwrap()
        .listen
        .ws_rebalance;
        assert_eq!(rebalance.interval, Duration::ZERO);
        assert_eq!((rebalance.margin_percent, rebalance.max_percent), (10, 25));
        for (var, value) in [
            ("WS_REBALANCE_INTERVAL_SECONDS", "-1"),
            ("WS_REBALANCE_MARGIN_PERCENT", "0"),
            ("WS_REBALANCE_MAX_PERCENT", "0"),
            ("WS_REBALANCE_MAX_PERCENT", "101"),
        ] {
            let err = load(&[(var, value)]).unwrap_err().to_string();
            assert!(err.contains(&format!("{var} is invalid")), "{err}");
        }
    }

    #[test]
    fn bad_values_name_their_variable() {
        let cases: &[(&str, &str, &str)] = &[
            ("DATABASE_POOL_SIZE", "lots", "DATABASE_POOL_SIZE is invalid: \"lots\""),
            (
                "DATABASE_POOL_SIZE",
                "0",
                "DATABASE_POOL_SIZE is invalid: 0 is outside 1..=1000",
            ),
            (
                "DATABASE_URL",
                "mysql://x",
                "DATABASE_URL is invalid: expected a URL starting with postgres://",
            ),
            ("REDIS_URL", "localhost:6379", "REDIS_URL is invalid"),
            (
                "ALGORITHM",
                "HS999",
                "ALGORITHM is invalid: \"HS999\": unsupported algorithm",
            ),
            ("ENVIRONMENT", "moon", "ENVIRONMENT is invalid"),
            (
                "ALLOWED_ORIGINS",
                "[1,2]",
                "ALLOWED_ORIGINS is invalid: not a JSON list of strings",
            ),
            (
                "ALLOWED_ORIGINS",
                "unilink.app",
                "ALLOWED_ORIGINS is invalid: expected a URL",
            ),
            (
                "ALLOWED_EMAIL_DOMAINS",
                "localhost",
                "ALLOWED_EMAIL_DOMAINS is invalid: \"localhost\" is not a domain",
            ),
            (
                "ACCESS_TOKEN_EXPIRE_MINUTES",
                "-5",
                "ACCESS_TOKEN_EXPIRE_MINUTES is invalid",
            ),
            ("SMTP_PORT", "70000", "SMTP_PORT is invalid"),
            ("GRPC_ADDR", "nowhere", "GRPC_ADDR is invalid"),
            ("EMAIL_FROM", "noreply", "EMAIL_FROM is invalid"),
            ("AUTH_GRPC_URL", "auth:50051", "AUTH_GRPC_URL is invalid"),
        ];
        for (var, value, expected) in cases {
            let err = load(&[(var, value)]).expect_err(var).to_string();
            assert!(
                err.starts_with(expected),
                "{var}={value}: got {err:?}, want prefix {expected:?}"
            );
        }
    }

    const STRONG: &str = "0123456789abcdef0123456789abcdef";

    fn production(extra: &[(&'static str, &'static str)]) -> Result<Settings, ConfigError> {
        let mut vars = vec![
            ("ENVIRONMENT", "production"),
            ("SECRET_KEY", STRONG),
            ("SMTP_SERVER", "smtp.sendgrid.net"),
            ("ALLOWED_ORIGINS", "https://unilink.app"),
        ];
        vars.extend_from_slice(extra);
        // later entries win, like a shell's last assignment
        load(&vars)
    }

    #[test]
    fn production_accepts_a_strong_setup() {
        let s = production(&[]).unwrap();
        assert!(s.environment.is_production());
    }

    #[test]
    fn production_refuses_a_weak_secret() {
        let err = production(&[("SECRET_KEY", "short-secret")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "SECRET_KEY is not safe for production: it has 12 characters; use at least 32 random characters"
        );
        let err = Settings::from_vars([
            ("ENVIRONMENT", "production"),
            ("SMTP_SERVER", "smtp.x.org"),
            ("ALGORITHM", "HS256"),
            ("JWT_ALLOW_HS256", "true"),
        ])
        .unwrap_err();
        assert_eq!(err, ConfigError::Missing { var: "SECRET_KEY" });
        assert_eq!(err.to_string(), "SECRET_KEY is required but not set");
    }

    #[test]
    fn production_signs_with_eddsa_and_refuses_hs256_unless_allowed() {
        // No SECRET_KEY needed for the services that only verify.
        let s = Settings::from_vars([("ENVIRONMENT", "production"), ("SMTP_SERVER", "smtp.x.org")]).unwrap();
        assert_eq!(s.jwt.algorithm, JwtAlgorithm::EdDsa);
        assert!(s.jwt.secret_key.is_none());
        let err = production(&[("ALGORITHM", "HS256")]).unwrap_err().to_string();
        assert!(
            err.starts_with("ALGORITHM is not safe for production: HS256 hands the signing secret"),
            "{err}"
        );
        assert!(err.contains("JWT_ALLOW_HS256=true"), "{err}");
        let s = production(&[("ALGORITHM", "HS256"), ("JWT_ALLOW_HS256", "true")]).unwrap();
        assert_eq!(s.jwt.algorithm, JwtAlgorithm::Hs256);
        let err = production(&[("ALGORITHM", "HS256"), ("JWT_ALLOW_HS256", "maybe")])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("JWT_ALLOW_HS256 is invalid"), "{err}");
        // Development keeps HS256 and its development secret.
        let s = load(&[]).unwrap();
        assert_eq!(s.jwt.algorithm, JwtAlgorithm::Hs256);
        assert!(s.jwt.secret_key.is_some());
    }

    #[test]
    fn production_mail_needs_tls() {
        let s = production(&[]).unwrap();
        assert_eq!(s.smtp.tls, SmtpTls::Required);
        assert_eq!(production(&[("SMTP_PORT", "465")]).unwrap().smtp.tls, SmtpTls::Implicit);
        let err = production(&[("SMTP_TLS", "opportunistic")]).unwrap_err().to_string();
        assert!(err.starts_with("SMTP_TLS is not safe for production"), "{err}");
        assert_eq!(load(&[]).unwrap().smtp.tls, SmtpTls::Opportunistic);
        assert_eq!(load(&[("SMTP_TLS", "required")]).unwrap().smtp.tls, SmtpTls::Required);
        assert!(load(&[("SMTP_TLS", "never")]).is_err());
    }

    #[test]
    fn production_refuses_plaintext_to_data_stores_on_the_network() {
        let remote = "postgres://u:p@db.internal:5432/unilink";
        let err = production(&[("DATABASE_URL", remote)]).unwrap_err().to_string();
        assert!(
            err.starts_with("DATABASE_URL is not safe for production: sslmode=prefer to a database on the network"),
            "{err}"
        );
        for mode in ["require", "verify-ca", "verify-full"] {
            let url = format!("{remote}?sslmode={mode}&sslrootcert=/ca.pem");
            let url: &'static str = Box::leak(url.into_boxed_str());
            production(&[("DATABASE_URL", url)]).unwrap();
        }
        production(&[("DATABASE_URL", remote), ("DATABASE_ALLOW_PLAINTEXT", "true")]).unwrap();
        production(&[("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/u")]).unwrap();
        production(&[("DATABASE_URL", "postgres://postgres@localhost/u?sslmode=disable")]).unwrap();
        production(&[("DATABASE_URL", "postgres://u@%2Fvar%2Frun%2Fpostgresql/u")]).unwrap();
        let err = production(&[("DATABASE_READ_URL", "postgres://u@replica.internal/u?sslmode=disable")])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("DATABASE_READ_URL is not safe for production"), "{err}");

        let err = production(&[("REDIS_URL", "redis://:pw@redis.internal:6379")])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("REDIS_URL is not safe for production: redis:// to a server"),
            "{err}"
        );
        production(&[("REDIS_URL", "rediss://:pw@redis.internal:6379")]).unwrap();
        production(&[
            ("REDIS_URL", "redis://:pw@redis.internal:6379"),
            ("REDIS_ALLOW_PLAINTEXT", "true"),
        ])
        .unwrap();
        production(&[("REDIS_URL", "redis://127.0.0.1:6379")]).unwrap();
        let err = production(&[("REDIS_SENTINELS", "s1.internal:26379"), ("REDIS_SENTINEL_MASTER", "m")])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("REDIS_URL is not safe for production"), "{err}");
    }

    #[test]
    fn sentinels_need_a_master_name_and_host_ports() {
        let s = load(&[
            ("REDIS_SENTINELS", "127.0.0.1:26379, [::1]:26380"),
            ("REDIS_SENTINEL_MASTER", "unilink"),
        ])
        .unwrap();
        assert_eq!(
            s.redis.sentinels,
            vec![("127.0.0.1".to_owned(), 26379), ("::1".to_owned(), 26380)]
        );
        assert_eq!(
            load(&[("REDIS_SENTINELS", "127.0.0.1:26379")]).unwrap_err(),
            ConfigError::Missing {
                var: "REDIS_SENTINEL_MASTER"
            }
        );
        let err = load(&[("REDIS_SENTINELS", "nohost"), ("REDIS_SENTINEL_MASTER", "m")]).unwrap_err();
        assert!(err.to_string().starts_with("REDIS_SENTINELS is invalid"), "{err}");
    }

    #[test]
    fn event_seal_keys_have_a_development_default_only() {
        assert_eq!(load(&[]).unwrap().event_seal_keys.len(), 1);
        assert!(production(&[]).unwrap().event_seal_keys.is_empty());
        let s = production(&[(
            "EVENT_SEAL_KEYS",
            "q8Vb3kR1xZt7LmN2pQ9sW4eY6uI0oA5dF+gH/jKlM1E=,Zp4Tn8Wq2Lx6Rb0Yc3Vd7Hf1Jg5Km9Ns+Ou/Pi2Aw4E=",
        )])
        .unwrap();
        assert_eq!(s.event_seal_keys.len(), 2);
        let err = production(&[("EVENT_SEAL_KEYS", DEV_EVENT_SEAL_KEY)])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("EVENT_SEAL_KEYS is not safe for production"), "{err}");
    }

    #[test]
    fn production_refuses_template_placeholders_in_any_secret() {
        let seal = "q8Vb3kR1xZt7LmN2pQ9sW4eY6uI0oA5dF+gH/jK=";
        let cases: &[(&'static str, &'static str)] = &[
            ("SECRET_KEY", "CHANGE-ME-generate-a-long-random-secret-key"),
            ("SECRET_KEY", "x9TqChangeMe-Z1v7Lk3Wd8Rp2Mn5Bf0Yh6"),
            ("EVENT_SEAL_KEYS", "change_me_0123456789abcdefghijklmnopqrst"),
            ("TURN_SECRET", "CHANGE-ME-turn-secret-0123456789"),
            ("SMTP_PASSWORD", "CHANGE-ME-smtp-password"),
            (
                "DATABASE_URL",
                "postgres://unilink:CHANGE-ME-postgres-password@127.0.0.1/unilink",
            ),
            ("REDIS_URL", "redis://:changeme@127.0.0.1:6379"),
            ("SENTRY_DSN", "https://CHANGEME@sentry.example/1"),
            ("JWT_PREVIOUS_SECRET_KEYS", "CHANGE-ME-old-key"),
        ];
        for (var, value) in cases {
            let turn = [("TURN_URLS", "turn:turn.example.com:3478"), ("TURN_SECRET", seal)];
            let err = production(&[turn[0], turn[1], (*var, *value)])
                .expect_err(var)
                .to_string();
            assert_eq!(
                err,
                format!(
                    "{var} is not safe for production: it still holds a CHANGE-ME placeholder from a template; set the real value"
                ),
            );
            assert!(!err.contains(value), "the message repeats the value: {err}");
            // Outside production the same values load.
            load(&[
                (*var, *value),
                ("TURN_URLS", "turn:turn.example.com:3478"),
                ("TURN_SECRET", "north"),
            ])
            .expect(var);
        }
    }

    #[test]
    fn production_refuses_generated_secrets_that_were_not_generated() {
        let err = production(&[("SECRET_KEY", "passwordpasswordpasswordpassword")])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("SECRET_KEY is not safe for production: it uses only 7 distinct characters"),
            "{err}"
        );
        let err = production(&[("SECRET_KEY", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("only 1 distinct characters"), "{err}");
        // Random hex (`openssl rand -hex 32`) and base64 pass.
        production(&[(
            "SECRET_KEY",
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        )])
        .unwrap();
        production(&[("SECRET_KEY", "Xq3vR8tLm2Zp9Wd4Kf7Bn1Hs6Jc0Gy5Ea-_uPoIeTw")]).unwrap();

        let zeros = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        let err = production(&[("EVENT_SEAL_KEYS", zeros)]).unwrap_err().to_string();
        assert!(
            err.starts_with("EVENT_SEAL_KEYS is not safe for production: it uses only 2"),
            "{err}"
        );
        let err = production(&[("EVENT_SEAL_KEYS", "c2hvcnQ=")]).unwrap_err().to_string();
        assert!(
            err.starts_with("EVENT_SEAL_KEYS is not safe for production: it has 8 characters"),
            "{err}"
        );

        let turn = [("TURN_URLS", "turn:turn.example.com:3478")];
        let err = production(&[turn[0], ("TURN_SECRET", "north")])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("TURN_SECRET is not safe for production: it has 5 characters"),
            "{err}"
        );
        let err = production(&[turn[0], ("TURN_SECRET", "abababababababababab")])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("TURN_SECRET is not safe for production: it uses only 2"),
            "{err}"
        );
        production(&[turn[0], ("TURN_SECRET", "Zk8pQ2wX7mR4tV9yB3nC")]).unwrap();
        // Provider passwords are not ours to judge beyond placeholders.
        production(&[("SMTP_PASSWORD", "pw")]).unwrap();
    }

    #[test]
    fn a_weak_secret_is_fine_outside_production() {
        let s = load(&[("SECRET_KEY", "short")]).unwrap();
        assert_eq!(s.jwt.secret_key.unwrap().expose(), "short");
    }

    #[test]
    fn production_refuses_wildcard_cors_and_missing_smtp() {
        let err = production(&[("ALLOWED_ORIGINS", "*")]).unwrap_err().to_string();
        assert!(err.starts_with("ALLOWED_ORIGINS is not safe for production"), "{err}");
        let err = Settings::from_vars([("ENVIRONMENT", "production"), ("SECRET_KEY", STRONG)])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("SMTP_SERVER is not safe for production"), "{err}");
    }

    #[test]
    fn secrets_are_hidden_from_debug() {
        let s = load(&[
            ("SECRET_KEY", "super-secret-value-1234567890-abcdef"),
            ("DATABASE_URL", "postgres://user:dbpass-xyz@db/unilink"),
            ("SMTP_PASSWORD", "SG.smtp-pass-xyz"),
            ("SENTRY_DSN", "https://key-xyz@sentry.example/1"),
        ])
        .unwrap();
        let printed = format!("{s:?}");
        for secret in ["super-secret-value", "dbpass-xyz", "smtp-pass-xyz", "key-xyz"] {
            assert!(!printed.contains(secret), "{secret} leaked in Debug output");
        }
        assert!(printed.contains("[redacted]"));
    }

    #[test]
    fn empty_values_count_as_unset() {
        let s = load(&[("DATABASE_POOL_SIZE", "  "), ("SMTP_SERVER", "")]).unwrap();
        assert_eq!(s.database.pool_size, 20);
        assert!(s.smtp.server.is_none());
    }
}
