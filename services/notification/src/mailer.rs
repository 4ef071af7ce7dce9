//! Where emails go: an SMTP server (lettre), or — with no server configured
//! outside production — the log and a folder of `.eml` files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use unilink_config::{SmtpSettings, SmtpTls};
use unilink_domain::EventId;

use crate::email::Email;

/// Longest `last_error` kept in the ledger.
const MAX_ERROR_LEN: usize = 500;

/// Sends emails.
#[derive(Clone)]
pub enum Mailer {
    /// A real SMTP server, as `SMTP_TLS` says: STARTTLS required (a server
    /// that does not offer it is an error), implicit TLS, or — development
    /// only — STARTTLS when offered; credentials when configured.
    Smtp {
        transport: AsyncSmtpTransport<Tokio1Executor>,
        timeout: Duration,
    },
    /// Development without an SMTP server: log, and write `<event id>.eml`
    /// into `dir` when set.
    Outbox { dir: Option<PathBuf>, log_body: bool },
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mailer::Smtp { timeout, .. } => f
                .debug_struct("Mailer::Smtp")
                .field("timeout", timeout)
                .finish_non_exhaustive(),
            Mailer::Outbox { dir, log_body } => f
                .debug_struct("Mailer::Outbox")
                .field("dir", dir)
                .field("log_body", log_body)
                .finish(),
        }
    }
}

/// Why a mail was not handed over.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("SMTP delivery failed: {0}")]
    Smtp(String),
    /// The server refused the mail for good (a 5xx answer).
    #[error("SMTP server refused the mail: {0}")]
    Refused(String),
    #[error("SMTP delivery did not finish within {0:?}")]
    Timeout(Duration),
    #[error("writing the mail to the outbox folder failed: {0}")]
    Outbox(String),
}

impl SendError {
    /// Whether trying again cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, SendError::Refused(_))
    }

    /// The text kept in the ledger's `last_error`: bounded, no secrets (lettre's
    /// errors carry server replies and I/O causes, never credentials).
    pub fn ledger_text(&self) -> String {
        let text = self.to_string();
        match text.char_indices().nth(MAX_ERROR_LEN) {
            Some((cut, _)) => format!("{}…", &text[..cut]),
            None => text,
        }
    }
}

/// The `EMAIL_FROM` mailbox, with a display name when it has none.
pub fn from_mailbox(smtp: &SmtpSettings) -> Result<Mailbox, String> {
    let mut mailbox: Mailbox = smtp
        .from
        .parse()
        .map_err(|e| format!("EMAIL_FROM {:?} is not a mailbox: {e}", smtp.from))?;
    if mailbox.name.is_none() {
        mailbox.name = Some("UniLink".to_owned());
    }
    Ok(mailbox)
}

impl Mailer {
    /// The mailer the settings ask for.
    pub fn from_settings(smtp: &SmtpSettings, production: bool) -> Result<Mailer, String> {
        let Some(server) = smtp.server.as_deref() else {
            return Ok(Mailer::Outbox {
                dir: smtp.outbox_dir.clone(),
                log_body: !production,
            });
        };
        let parameters = TlsParameters::new(server.to_owned())
            .map_err(|e| format!("SMTP_SERVER {server:?}: TLS parameters: {e}"))?;
        let tls = match smtp.tls {
            SmtpTls::Implicit => Tls::Wrapper(parameters),
            SmtpTls::Required => Tls::Required(parameters),
            SmtpTls::Opportunistic if production => {
                return Err(
                    "SMTP_TLS=opportunistic is refused in production (mail would fall back to plaintext)".to_owned(),
                );
            }
            SmtpTls::Opportunistic => Tls::Opportunistic(parameters),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(server)
            .port(smtp.port)
            .tls(tls)
            .timeout(Some(smtp.timeout));
        if let (Some(user), Some(password)) = (&smtp.user, &smtp.password) {
            builder = builder.credentials(Credentials::new(user.clone(), password.expose().to_owned()));
        }
        Ok(Mailer::Smtp {
            transport: builder.build(),
            timeout: smtp.timeout,
        })
    }

    /// Hands the message over: `Ok` once the SMTP server accepted it (or, in
    /// outbox mode, once it was logged and written).
    pub async fn send(&self, event_id: EventId, email: &Email, message: Message) -> Result<(), SendError> {
        match self {
            Mailer::Smtp { transport, timeout } => {
                // lettre's timeout covers each network step; this bounds the whole.
                let whole = timeout.saturating_mul(3);
                match tokio::time::timeout(whole, transport.send(message)).await {
                    Ok(Ok(_response)) => Ok(()),
                    Ok(Err(e)) if e.is_permanent() => Err(SendError::Refused(error_chain(&e))),
                    Ok(Err(e)) => Err(SendError::Smtp(error_chain(&e))),
                    Err(_) => Err(SendError::Timeout(whole)),
                }
            }
            Mailer::Outbox { dir, log_body } => {
                if *log_body {
                    tracing::info!(
                        event_id = %event_id,
                        to = %email.to,
                        subject = %email.subject,
                        body = %email.text,
                        "no SMTP server configured; email logged instead of sent"
                    );
                } else {
                    tracing::info!(
                        event_id = %event_id,
                        to = %email.to,
                        subject = %email.subject,
                        "no SMTP server configured; email logged instead of sent"
                    );
                }
                if let Some(dir) = dir {
                    let dir = dir.clone();
                    let bytes = message.formatted();
                    let name = format!("{event_id}.eml");
                    tokio::task::spawn_blocking(move || write_eml(&dir, &name, &bytes))
                        .await
                        .map_err(|e| SendError::Outbox(e.to_string()))?
                        .map_err(|e| SendError::Outbox(e.to_string()))?;
                }
                Ok(())
            }
        }
    }
}

/// Writes `dir/name` atomically (temporary file, then rename).
fn write_eml(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let temporary = dir.join(format!(".{name}.tmp"));
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, dir.join(name))
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
