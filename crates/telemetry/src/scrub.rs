//! Removing secrets from text and JSON before it leaves the process (Sentry
//! events, client error reports): JSON Web Tokens, `Bearer` credentials and
//! the values of sensitive keys (`password=…`, `"token": "…"`, …).

use serde_json::Value;

/// What replaces a secret.
pub const FILTERED: &str = "[Filtered]";

/// Key names whose values are never kept (matched case-insensitively as a
/// substring: `refresh_token`, `X-Password` and `passwordConfirm` all count).
const SENSITIVE_KEYS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "authorization",
    "cookie",
    "otp",
    "api_key",
    "apikey",
    "session",
    "credential",
];

/// Whether a key names something secret.
pub fn is_sensitive_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SENSITIVE_KEYS.iter().any(|s| key.contains(s))
}

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Length of a JWT (`xxx.yyy.zzz`, header starting `eyJ`) at the start of `s`.
fn jwt_len(s: &[u8]) -> Option<usize> {
    if !s.starts_with(b"eyJ") {
        return None;
    }
    let mut i = 0;
    for part in 0..3 {
        let start = i;
        while i < s.len() && is_b64url(s[i]) {
            i += 1;
        }
        // Header and payload are never short; the signature may be empty (alg none).
        if part < 2 && i - start < 8 {
            return None;
        }
        if part < 2 {
            if s.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
    }
    Some(i)
}

/// Where the value after a sensitive key starts, when `s[key_end..]` looks
/// like `": "`, `=`, `: ` or `=\"` (returns the value's start and its closing quote).
fn value_start(s: &[u8], mut i: usize) -> Option<(usize, Option<u8>)> {
    // The rest of an identifier: `password_confirm=…`, `refresh_token":…`.
    while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == b'_' || s[i] == b'-') {
        i += 1;
    }
    if matches!(s.get(i), Some(b'"' | b'\'')) {
        i += 1;
    }
    while matches!(s.get(i), Some(b' ')) {
        i += 1;
    }
    if !matches!(s.get(i), Some(b'=' | b':')) {
        return None;
    }
    i += 1;
    while matches!(s.get(i), Some(b' ')) {
        i += 1;
    }
    match s.get(i) {
        Some(q @ (b'"' | b'\'')) => Some((i + 1, Some(*q))),
        Some(_) => Some((i, None)),
        None => None,
    }
}

/// `text` with JWTs, bearer credentials and values of sensitive keys replaced by [`FILTERED`].
pub fn scrub_text(text: &str) -> String {
    let s = text.as_bytes();
    let lower = text.to_ascii_lowercase();
    let l = lower.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < s.len() {
        if let Some(n) = jwt_len(&s[i..]) {
            out.push_str(&text[copied..i]);
            out.push_str(FILTERED);
            i += n;
            copied = i;
            continue;
        }
        if l[i..].starts_with(b"bearer ") {
            let mut end = i + 7;
            while end < s.len() && s[end] == b' ' {
                end += 1;
            }
            let value = end;
            while end < s.len() && !s[end].is_ascii_whitespace() && !b"\"',;".contains(&s[end]) {
                end += 1;
            }
            if end > value {
                out.push_str(&text[copied..value]);
                out.push_str(FILTERED);
                i = end;
                copied = i;
                continue;
            }
        }
        let key = SENSITIVE_KEYS.iter().find(|k| l[i..].starts_with(k.as_bytes()));
        if let Some(key) = key
            && let Some((start, quote)) = value_start(s, i + key.len())
        {
            let mut end = start;
            match quote {
                Some(q) => {
                    while end < s.len() && s[end] != q {
                        // Skip escaped quotes inside JSON strings.
                        end += if s[end] == b'\\' { 2 } else { 1 };
                    }
                    end = end.min(s.len());
                }
                None => {
                    while end < s.len() && !s[end].is_ascii_whitespace() && !b"&,;}\"'".contains(&s[end]) {
                        end += 1;
                    }
                }
            }
            if end > start {
                out.push_str(&text[copied..start]);
                out.push_str(FILTERED);
                i = end;
                copied = i;
                continue;
            }
        }
        // Advance by one character (not byte) to stay on UTF-8 boundaries.
        i += text[i..].chars().next().map_or(1, char::len_utf8);
    }
    out.push_str(&text[copied..]);
    out
}

/// `value` with every sensitive key's value replaced and every string scrubbed.
pub fn scrub_json(value: &mut Value) {
    match value {
        Value::String(s) => *s = scrub_text(s),
        Value::Array(items) => items.iter_mut().for_each(scrub_json),
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if is_sensitive_key(key) {
                    *v = Value::String(FILTERED.to_owned());
                } else {
                    scrub_json(v);
                }
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWT: &str =
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";

    #[test]
    fn tokens_and_passwords_are_filtered() {
        let text = format!(
            "failed for Authorization: Bearer {JWT} at /verify?token=abc123&x=1 body {{\"email\":\"a@b.c\",\"password\":\"hunter2 \\\" x\"}} password=s3cret pwd ok"
        );
        let clean = scrub_text(&text);
        for secret in [JWT, "abc123", "hunter2", "s3cret"] {
            assert!(!clean.contains(secret), "{secret} in {clean}");
        }
        assert!(clean.contains("\"email\":\"a@b.c\""), "{clean}");
        assert!(clean.contains("x=1"), "{clean}");
        assert!(clean.contains("pwd ok"), "{clean}");
        let bare = scrub_text(&format!("token {JWT} leaked"));
        assert_eq!(bare, "token [Filtered] leaked");
    }

    #[test]
    fn harmless_text_is_unchanged() {
        for text in [
            "",
            "column \"email\" does not exist",
            "tokens are short-lived",
            "naïve café — ünïcode",
            "eyJ short.no",
        ] {
            assert_eq!(scrub_text(text), text);
        }
    }

    #[test]
    fn json_keys_and_strings_are_scrubbed() {
        let mut value = serde_json::json!({
            "refresh_token": "r",
            "nested": {"Password": 1, "note": format!("Bearer {JWT}")},
            "list": [JWT, "fine"],
        });
        scrub_json(&mut value);
        assert_eq!(value["refresh_token"], FILTERED);
        assert_eq!(value["nested"]["Password"], FILTERED);
        assert_eq!(value["nested"]["note"], "Bearer [Filtered]");
        assert_eq!(value["list"][0], FILTERED);
        assert_eq!(value["list"][1], "fine");
    }
}
