//! The emails the service sends: what they say, as plain text and HTML.
//!
//! Pure functions of the event payload; [`Email::to_message`] turns one into
//! a MIME message (`multipart/alternative`, plain text first).

use chrono::{DateTime, Utc};
use lettre::Message;
use lettre::message::{Mailbox, MultiPart};
use unilink_domain::EventId;
use unilink_events::payload::{LoginOtpRequested, VerificationRequested};

/// Which email, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailKind {
    Verification,
    LoginOtp,
}

impl EmailKind {
    pub fn label(self) -> &'static str {
        match self {
            EmailKind::Verification => "verification",
            EmailKind::LoginOtp => "login_otp",
        }
    }
}

/// One email, ready to be turned into a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    pub kind: EmailKind,
    /// The recipient's address.
    pub to: String,
    /// The recipient's display name.
    pub to_name: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Why an email cannot be built (it never will be: the event is rejected).
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("recipient address is invalid: {0}")]
    Recipient(String),
    #[error("message cannot be built: {0}")]
    Message(String),
}

/// How long a login code stays valid, by default (auth's rule).
pub const OTP_VALIDITY_MINUTES: i64 = 10;

/// The verification email: the link `{frontend}/verify?token=…` and the
/// token itself (`token`: the payload's, opened).
pub fn verification_email(payload: &VerificationRequested, token: &str, frontend_url: &str) -> Email {
    let link = verification_link(frontend_url, token);
    let name = display_name(&payload.full_name, &payload.username);
    let expires = format_time(payload.expires_at);
    let text = format!(
        "Hi {name},\n\
         \n\
         Welcome to UniLink! Please confirm your university email address by opening this link:\n\
         \n\
         {link}\n\
         \n\
         If the link does not open, enter this verification token in the app:\n\
         \n\
         {token}\n\
         \n\
         The link is valid until {expires}.\n\
         If you did not create a UniLink account, you can ignore this email.\n\
         \n\
         — The UniLink team\n",
    );
    let html = format!(
        "<!DOCTYPE html>\n<html><body style=\"font-family:sans-serif;line-height:1.5\">\n\
         <p>Hi {name},</p>\n\
         <p>Welcome to UniLink! Please confirm your university email address:</p>\n\
         <p><a href=\"{link_attr}\" style=\"display:inline-block;padding:10px 18px;background:#4f46e5;color:#fff;text-decoration:none;border-radius:6px\">Verify my email</a></p>\n\
         <p>Or open this link: <a href=\"{link_attr}\">{link_text}</a></p>\n\
         <p>Verification token: <code>{token}</code></p>\n\
         <p>The link is valid until {expires}. If you did not create a UniLink account, you can ignore this email.</p>\n\
         <p>— The UniLink team</p>\n\
         </body></html>\n",
        name = html_escape(&name),
        link_attr = html_escape(&link),
        link_text = html_escape(&link),
        token = html_escape(token),
        expires = html_escape(&expires),
    );
    Email {
        kind: EmailKind::Verification,
        to: payload.email.clone(),
        to_name: name,
        subject: "Verify your UniLink email address".to_owned(),
        text,
        html,
    }
}

/// The login code email (`code`: the payload's, opened); `occurred_at` is
/// when auth issued the code.
pub fn login_otp_email(payload: &LoginOtpRequested, code: &str, occurred_at: DateTime<Utc>) -> Email {
    let minutes = validity_minutes(occurred_at, payload.expires_at);
    let name = display_name("", &payload.username);
    let expires = format_time(payload.expires_at);
    let text = format!(
        "Hi {name},\n\
         \n\
         Your UniLink login code is:\n\
         \n\
         {code}\n\
         \n\
         It is valid for {minutes} minutes (until {expires}) and can be used once.\n\
         If you did not try to log in, change your password: someone knows it.\n\
         \n\
         — The UniLink team\n"
    );
    let html = format!(
        "<!DOCTYPE html>\n<html><body style=\"font-family:sans-serif;line-height:1.5\">\n\
         <p>Hi {name},</p>\n\
         <p>Your UniLink login code is:</p>\n\
         <p style=\"font-size:32px;font-weight:bold;letter-spacing:6px;font-family:monospace\">{code}</p>\n\
         <p>It is valid for <strong>{minutes} minutes</strong> (until {expires}) and can be used once.</p>\n\
         <p>If you did not try to log in, change your password: someone knows it.</p>\n\
         <p>— The UniLink team</p>\n\
         </body></html>\n",
        name = html_escape(&name),
        code = html_escape(code),
        expires = html_escape(&expires),
    );
    Email {
        kind: EmailKind::LoginOtp,
        to: payload.email.clone(),
        to_name: name,
        subject: "Your UniLink login code".to_owned(),
        text,
        html,
    }
}

impl Email {
    /// The MIME message: `multipart/alternative` (plain text, then HTML),
    /// with a `Message-ID` derived from the event so receivers can spot a
    /// duplicate.
    pub fn to_message(&self, from: &Mailbox, event_id: EventId) -> Result<Message, ComposeError> {
        let address = self
            .to
            .parse()
            .map_err(|e: lettre::address::AddressError| ComposeError::Recipient(e.to_string()))?;
        let to = Mailbox::new(Some(self.to_name.clone()), address);
        Message::builder()
            .from(from.clone())
            .to(to)
            .subject(self.subject.clone())
            .message_id(Some(format!("<{event_id}@{}>", from.email.domain())))
            .multipart(MultiPart::alternative_plain_html(self.text.clone(), self.html.clone()))
            .map_err(|e| ComposeError::Message(e.to_string()))
    }
}

/// `{frontend}/verify?token=<token, percent-encoded>`.
pub fn verification_link(frontend_url: &str, token: &str) -> String {
    format!(
        "{}/verify?token={}",
        frontend_url.trim_end_matches('/'),
        url_encode(token)
    )
}

fn display_name(full_name: &str, username: &str) -> String {
    let name: String = full_name.chars().filter(|c| !c.is_control()).collect();
    let name = name.trim();
    if name.is_empty() {
        username.chars().filter(|c| !c.is_control()).collect()
    } else {
        name.to_owned()
    }
}

fn validity_minutes(issued: DateTime<Utc>, expires: DateTime<Utc>) -> i64 {
    let seconds = (expires - issued).num_seconds();
    if seconds <= 0 {
        OTP_VALIDITY_MINUTES
    } else {
        ((seconds + 30) / 60).max(1)
    }
}

fn format_time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn html_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn url_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use unilink_events::seal::SealedText;

    fn verification() -> VerificationRequested {
        VerificationRequested {
            user_id: "u1".into(),
            email: "ana@kiit.ac.in".into(),
            username: "ana".into(),
            full_name: "Ana <script>alert(1)</script> & \"Co\"".into(),
            token: SealedText::Plain("unused".into()),
            expires_at: "2030-01-02T03:04:05Z".parse().unwrap(),
        }
    }

    #[test]
    fn verification_email_has_the_link_the_token_and_escapes_the_name() {
        let email = verification_email(&verification(), "tok_en-123+/=", "https://app.unilink.test/");
        let link = "https://app.unilink.test/verify?token=tok_en-123%2B%2F%3D";
        assert!(email.text.contains(link), "{}", email.text);
        assert!(email.text.contains("\ntok_en-123+/=\n"));
        assert!(email.text.contains("2030-01-02 03:04 UTC"));
        assert!(email.html.contains(&format!("href=\"{link}\"")));
        assert!(!email.html.contains("<script>"));
        assert!(
            email
                .html
                .contains("Ana &lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;Co&quot;")
        );
        assert_eq!(email.to, "ana@kiit.ac.in");
        assert_eq!(email.kind.label(), "verification");
    }

    #[test]
    fn otp_email_shows_the_code_and_its_validity() {
        let issued: DateTime<Utc> = "2030-01-02T03:00:00Z".parse().unwrap();
        let payload = LoginOtpRequested {
            user_id: "u1".into(),
            email: "ana@kiit.ac.in".into(),
            username: "ana_<b>".into(),
            otp: SealedText::Plain("unused".into()),
            expires_at: issued + chrono::Duration::minutes(10),
        };
        let email = login_otp_email(&payload, "042917", issued);
        assert!(email.text.contains("\n042917\n"));
        assert!(email.text.contains("valid for 10 minutes"));
        assert!(email.html.contains(">042917</p>"));
        assert!(email.html.contains("ana_&lt;b&gt;"));
        assert!(!email.subject.contains("042917"));
    }

    #[test]
    fn messages_are_multipart_alternative() {
        let email = verification_email(&verification(), "tok", "http://localhost:5173");
        let from: Mailbox = "UniLink <noreply@unilink.app>".parse().unwrap();
        let id = EventId::new();
        let raw = String::from_utf8(email.to_message(&from, id).unwrap().formatted()).unwrap();
        assert!(raw.contains("multipart/alternative"), "{raw}");
        assert!(raw.contains(&format!("Message-ID: <{id}@unilink.app>")), "{raw}");
        let bad = Email {
            to: "not an address".into(),
            ..email
        };
        assert!(matches!(bad.to_message(&from, id), Err(ComposeError::Recipient(_))));
    }

    #[test]
    fn encoders() {
        assert_eq!(url_encode("aZ09-_.~ +/é"), "aZ09-_.~%20%2B%2F%C3%A9");
        assert_eq!(
            html_escape("<a href='x'>&</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&lt;/a&gt;"
        );
        let t: DateTime<Utc> = "2030-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(validity_minutes(t, t + chrono::Duration::seconds(599)), 10);
        assert_eq!(validity_minutes(t, t), OTP_VALIDITY_MINUTES);
    }
}
