//! Where emails go: an SMTP server (lettre), or — with no server configured
//! outside production — the log and a folder of `.eml` files.
//!
//! Mail bodies carry login codes and verification tokens: the log gets a
//! body only in development (`ENVIRONMENT=development`, what `scripts/dev.sh`
//! sets). Tests, staging and production log who and what, never the body.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use unilink_config::{Environment, SmtpSettings, SmtpTls};
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
    /// No SMTP server (outside production): log, and write `<event id>.eml`
    /// into `dir` when set. `log_body` only in development.
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
    /// The mailer the settings ask for in `environment`.
    pub fn from_settings(smtp: &SmtpSettings, environment: Environment) -> Result<Mailer, String> {
        let production = environment.is_production();
        let Some(server) = smtp.server.as_deref() else {
            return Ok(Mailer::Outbox {
                dir: smtp.outbox_dir.clone(),
                // Codes and tokens in a log outlive the mail; only a
                // developer's own terminal may show them.
                log_body: environment == Environment::Development,
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
                    Ok(Err(e)) if e.is_permanent() => Err(SendError::Refused(unilink_errors::error_chain(&e))),
                    Ok(Err(e)) => Err(SendError::Smtp(unilink_errors::error_chain(&e))),
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

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::email::EmailKind;

    /// Everything the subscriber writes, for the test to read.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn no_server() -> SmtpSettings {
        unilink_config::Settings::from_vars([("ENVIRONMENT", "development")])
            .unwrap()
            .smtp
    }

    /// What the log shows when `environment`'s mailer "sends" a login code.
    async fn log_of_a_login_code(environment: Environment) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let mailer = Mailer::from_settings(&no_server(), environment).unwrap();
        let email = Email {
            kind: EmailKind::LoginOtp,
            to: "student@kiit.ac.in".to_owned(),
            to_name: "Student".to_owned(),
            subject: "Your UniLink login code".to_owned(),
            text: "Your code is 734019. It expires in 5 minutes.".to_owned(),
            html: "<p>Your code is <b>734019</b>.</p>".to_owned(),
        };
        let id = EventId::new();
        let from: Mailbox = "UniLink <noreply@unilink.app>".parse().unwrap();
        let message = email.to_message(&from, id).unwrap();
        mailer.send(id, &email, message).await.unwrap();
        String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn mail_bodies_are_logged_in_development_only() {
        let log = log_of_a_login_code(Environment::Development).await;
        assert!(log.contains("734019"), "development shows the code: {log}");
        for environment in [Environment::Test, Environment::Staging] {
            let log = log_of_a_login_code(environment).await;
            assert!(log.contains("email logged instead of sent"), "{environment:?}: {log}");
            assert!(log.contains("student@kiit.ac.in"), "{environment:?}: {log}");
            assert!(!log.contains("734019"), "{environment:?} logged the code: {log}");
        }
    }

    #[test]
    fn only_development_logs_bodies() {
        for (environment, expected) in [
            (Environment::Development, true),
            (Environment::Test, false),
            (Environment::Staging, false),
            (Environment::Production, false),
        ] {
            match Mailer::from_settings(&no_server(), environment).unwrap() {
                Mailer::Outbox { log_body, .. } => assert_eq!(log_body, expected, "{environment:?}"),
                other => panic!("{other:?}"),
            }
        }
    }
}
