//! The users a WebSocket scenario acts as: a file of `user_id token` lines,
//! written by `mint-tokens` from a list of ids (`scripts/bench-users.sh`).
//!
//! Logging thousands of users in through the mails is far too slow, so
//! `mint-tokens` signs their access tokens itself, with
//! [`unilink_tokens::SigningKeys`] built from the same settings auth reads
//! (`ALGORITHM`, `SECRET_KEY` or the PEM files, `JWT_ISSUER`,
//! `JWT_AUDIENCE`): the tokens are exactly the ones auth would issue, and the
//! gateway verifies them with the keys it gets from auth.

use std::io::Write;

use unilink_config::Settings;
use unilink_domain::UserId;
use unilink_tokens::SigningKeys;

use crate::Fail;
use crate::args::Args;

/// One user as a scenario acts as it.
#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub token: String,
}

/// Reads `user_id token` lines (blank lines and `#` comments skipped).
pub fn load(path: &str) -> Result<Vec<User>, Fail> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("--users {path}: {e}"))?;
    let mut users = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(id), Some(token), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(format!("{path}:{}: expected `user_id token`", n + 1).into());
        };
        UserId::parse(id).map_err(|e| format!("{path}:{}: {e}", n + 1))?;
        users.push(User {
            id: id.to_owned(),
            token: token.to_owned(),
        });
    }
    Ok(users)
}

/// The first `n` users of `--users`, or an error saying how many are missing.
pub fn take(args: &Args, n: usize, what: &str) -> Result<Vec<User>, Fail> {
    let path = args.get("users")?;
    let mut users = load(path)?;
    if users.len() < n {
        return Err(format!("{what} needs {n} users but {path} has {}", users.len()).into());
    }
    users.truncate(n);
    Ok(users)
}

/// Settings variables that decide how tokens are signed, read from the
/// environment unless given as an argument.
const SIGNING_VARS: [(&str, &str); 7] = [
    ("ALGORITHM", "algorithm"),
    ("SECRET_KEY", "secret"),
    ("JWT_ISSUER", "issuer"),
    ("JWT_AUDIENCE", "audience"),
    ("JWT_PRIVATE_KEY_FILE", "private-key-file"),
    ("JWT_PUBLIC_KEY_FILE", "public-key-file"),
    ("ACCESS_TOKEN_EXPIRE_MINUTES", "ttl-minutes"),
];

/// `mint-tokens --ids-file F --out F2 [--secret S] [--issuer I]
/// [--audience A] [--ttl-minutes M]`.
pub fn mint_tokens(args: &Args) -> Result<(), Fail> {
    let ids_path = args.get("ids-file")?;
    let out_path = args.get("out")?;
    let mut vars: Vec<(String, String)> = Vec::new();
    for (var, arg) in SIGNING_VARS {
        let value = args.opt(arg).map(str::to_owned).or_else(|| std::env::var(var).ok());
        if let Some(value) = value {
            vars.push((var.to_owned(), value));
        }
    }
    // The longest lifetime auth allows (24 h), so a minted file lasts a day
    // of benchmarking.
    if !vars.iter().any(|(k, _)| k == "ACCESS_TOKEN_EXPIRE_MINUTES") {
        vars.push(("ACCESS_TOKEN_EXPIRE_MINUTES".to_owned(), "1440".to_owned()));
    }
    let settings = Settings::from_vars(vars)?;
    let keys = SigningKeys::from_settings(&settings.jwt)?;

    let ids = std::fs::read_to_string(ids_path).map_err(|e| format!("--ids-file {ids_path}: {e}"))?;
    let mut out =
        std::io::BufWriter::new(std::fs::File::create(out_path).map_err(|e| format!("--out {out_path}: {e}"))?);
    let mut count = 0usize;
    for (n, line) in ids.lines().enumerate() {
        let raw = line.trim();
        if raw.is_empty() || raw.starts_with('#') {
            continue;
        }
        let id = UserId::parse(raw).map_err(|e| format!("{ids_path}:{}: {e}", n + 1))?;
        let (token, _) = keys.issue(id, "user", "loadgen")?;
        writeln!(out, "{id} {token}")?;
        count += 1;
    }
    out.flush()?;
    eprintln!(
        "mint-tokens: {count} tokens (issuer {}, audience {}, valid {} min) written to {out_path}",
        keys.issuer(),
        keys.audience(),
        keys.ttl().as_secs() / 60
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_files_are_parsed_and_checked() {
        let dir = std::env::temp_dir().join(format!("loadgen-users-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good");
        let id = UserId::new();
        std::fs::write(&good, format!("# users\n\n{id} tok.en.x\n")).unwrap();
        let users = load(good.to_str().unwrap()).unwrap();
        assert_eq!(users.len(), 1);
        assert_eq!(users[0].id, id.to_string());
        assert_eq!(users[0].token, "tok.en.x");
        let bad = dir.join("bad");
        std::fs::write(&bad, "not-a-uuid token\n").unwrap();
        assert!(load(bad.to_str().unwrap()).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
