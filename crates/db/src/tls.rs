//! TLS to PostgreSQL as libpq understands it, on rustls.
//!
//! `DATABASE_URL` (and `DATABASE_READ_URL`) may carry libpq's `sslmode`
//! (`disable`, `prefer` — the default —, `require`, `verify-ca`,
//! `verify-full`) and `sslrootcert` (a PEM CA file, or `system` for the
//! operating system's roots). tokio-postgres knows only the first three
//! modes, so [`endpoint`] takes both parameters out of the URL, hands
//! tokio-postgres the mode it knows (`require` for the `verify-*` ones) and
//! builds the rustls configuration that checks what the mode asks:
//!
//! | sslmode | encrypted | certificate checked |
//! |---|---|---|
//! | `disable` | never | – |
//! | `prefer` | when the server offers it | no |
//! | `require` | always | chain, if `sslrootcert` is given (libpq's rule); else no |
//! | `verify-ca` | always | chain to `sslrootcert` |
//! | `verify-full` | always | chain to `sslrootcert`, and the host name (or IP) |

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;
use unilink_tls::{Roots, Verify};

use crate::DbError;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(value: &str) -> Option<SslMode> {
        match value {
            "disable" => Some(SslMode::Disable),
            "prefer" => Some(SslMode::Prefer),
            "require" => Some(SslMode::Require),
            "verify-ca" => Some(SslMode::VerifyCa),
            "verify-full" => Some(SslMode::VerifyFull),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether every connection is encrypted.
    pub fn always_encrypted(self) -> bool {
        !matches!(self, SslMode::Disable | SslMode::Prefer)
    }
}

/// Where and how to connect: tokio-postgres's configuration, the TLS
/// connector, and what the URL asked (for messages).
#[derive(Clone)]
pub struct Endpoint {
    pub config: tokio_postgres::Config,
    pub tls: MakeRustls,
    pub mode: SslMode,
    /// The variable the URL came from (`DATABASE_URL`…), for messages.
    pub variable: &'static str,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("variable", &self.variable)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// The error of a failed connection, naming the setting when TLS was why.
    pub fn explain(&self, error: tokio_postgres::Error) -> DbError {
        let text = unilink_errors::error_chain(&error);
        if text.contains("TLS") || text.contains("certificate") {
            DbError::Tls(format!("{} (sslmode={}): {text}", self.variable, self.mode.as_str()))
        } else {
            DbError::Postgres(error)
        }
    }
}

/// Reads `url` (from `variable`) into an [`Endpoint`].
pub fn endpoint(url: &str, variable: &'static str) -> Result<Endpoint, DbError> {
    let bad = |reason: String| DbError::Config(format!("{variable}: {reason}"));
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut mode = SslMode::Prefer;
    let mut root_cert: Option<String> = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sslmode" => {
                mode = SslMode::parse(value).ok_or_else(|| {
                    bad(format!(
                        "sslmode={value} is not one of disable, prefer, require, verify-ca, verify-full"
                    ))
                })?;
            }
            "sslrootcert" => root_cert = Some(percent_decode(value).map_err(bad)?),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let mut config: tokio_postgres::Config = rest.parse().map_err(|e| bad(format!("{e}")))?;
    config.ssl_mode(match mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    let roots = root_cert.as_deref().map(|path| match path {
        "system" => Roots::System,
        path => Roots::File(path.into()),
    });
    let (roots, verify) = match (mode, roots) {
        (SslMode::VerifyFull | SslMode::VerifyCa, None) => {
            return Err(bad(format!(
                "sslmode={} needs sslrootcert (the server's CA file, or sslrootcert=system)",
                mode.as_str()
            )));
        }
        (SslMode::VerifyFull, Some(roots)) => (roots, Verify::Full),
        (SslMode::VerifyCa | SslMode::Require, Some(roots)) => (roots, Verify::ChainOnly),
        (_, _) => (Roots::System, Verify::Nothing),
    };
    let tls = unilink_tls::client_config(&roots, verify).map_err(|e| bad(format!("sslrootcert: {e}")))?;
    Ok(Endpoint {
        config,
        tls: MakeRustls { config: tls },
        mode,
        variable,
    })
}

fn percent_decode(value: &str) -> Result<String, String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("sslrootcert {value:?} has a bad %-escape"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("sslrootcert {value:?} is not UTF-8"))
}

/// tokio-postgres's TLS connector on rustls.
#[derive(Clone)]
pub struct MakeRustls {
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for MakeRustls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MakeRustls")
    }
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
        let name = ServerName::try_from(domain.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("host {domain:?}: {e}")))?;
        Ok(RustlsConnect {
            config: self.config.clone(),
            name,
        })
    }
}

/// One connection's TLS handshake.
#[derive(Debug)]
pub struct RustlsConnect {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let stream = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await?;
            Ok(RustlsStream(Box::new(stream)))
        })
    }
}

/// An encrypted connection to PostgreSQL.
pub struct RustlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S> std::fmt::Debug for RustlsStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RustlsStream")
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM without channel binding (SCRAM-SHA-256, not -PLUS).
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_modes_are_read_and_removed_from_the_url() {
        let e = endpoint(
            "postgres://u@db.example:5432/app?sslmode=require&application_name=x",
            "DATABASE_URL",
        )
        .unwrap();
        assert_eq!(e.mode, SslMode::Require);
        assert_eq!(e.config.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        assert_eq!(e.config.get_application_name(), Some("x"));
        let e = endpoint("postgres://u@db/app", "DATABASE_URL").unwrap();
        assert_eq!(e.mode, SslMode::Prefer);
        let e = endpoint(
            "postgres://u@db/app?sslmode=verify-ca&sslrootcert=system",
            "DATABASE_URL",
        )
        .unwrap();
        assert_eq!(e.mode, SslMode::VerifyCa);
        assert_eq!(e.config.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
    }

    #[test]
    fn bad_tls_settings_name_the_variable_and_the_setting() {
        let err = endpoint("postgres://u@db/app?sslmode=verify-full", "DATABASE_URL").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid database configuration: DATABASE_URL: sslmode=verify-full needs sslrootcert (the server's CA file, or sslrootcert=system)"
        );
        let err = endpoint(
            "postgres://u@db/app?sslmode=verify-full&sslrootcert=%2Fno%2Fca.pem",
            "DATABASE_READ_URL",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("DATABASE_READ_URL: sslrootcert: cannot read the CA file /no/ca.pem"),
            "{err}"
        );
        let err = endpoint("postgres://u@db/app?sslmode=allow", "DATABASE_URL")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sslmode=allow is not one of"), "{err}");
    }
}
