//! Secrets made and checked by auth: random tokens, their hashes, login
//! codes, and password hashing off the async executor.

use std::sync::Arc;

use argon2::password_hash::phc::PasswordHash;
use argon2::{Argon2, PasswordHasher as _, PasswordVerifier as _};
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use crate::error::AuthError;

/// 32 random bytes (256 bits), base64url without padding.
pub fn random_token() -> Result<String, AuthError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| AuthError::Internal(format!("no randomness: {e}")))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// How a token is stored: its SHA-256, hex.
pub fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// A uniformly random 6-digit code.
pub fn random_otp() -> Result<String, AuthError> {
    loop {
        let mut bytes = [0u8; 4];
        getrandom::fill(&mut bytes).map_err(|e| AuthError::Internal(format!("no randomness: {e}")))?;
        let n = u32::from_le_bytes(bytes);
        // Reject the top sliver so every code is equally likely.
        if n < u32::MAX - (u32::MAX % 1_000_000) {
            return Ok(format!("{:06}", n % 1_000_000));
        }
    }
}

/// Codes are keyed with the server secret, so a leaked table cannot be
/// brute-forced offline (there are only a million codes).
pub fn otp_hash(secret: &str, user_id: &str, otp: &str) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(user_id.as_bytes());
    mac.update(b":");
    mac.update(otp.as_bytes());
    hex(&mac.finalize().into_bytes())
}

/// Constant-time comparison of two hashes.
pub fn same_hash(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The outcome of checking a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordCheck {
    pub matches: bool,
    /// The stored hash uses other parameters than today's; store a new one.
    pub needs_rehash: bool,
}

/// Argon2id hashing on the blocking pool, with fewer hashes at a time than
/// there are cores, so password work never stalls the executor or the
/// machine that serves other requests.
#[derive(Debug, Clone)]
pub struct PasswordHasher {
    permits: Arc<Semaphore>,
    /// `$argon2id$v=19$m=…,t=…,p=…` of today's parameters.
    current_prefix: Arc<str>,
    /// Checked against when the account does not exist, so both paths cost the same.
    dummy_hash: Arc<str>,
}

impl PasswordHasher {
    pub fn new() -> Result<PasswordHasher, AuthError> {
        // Leave a core for everything else: hashing is bursty and heavy, and
        // the requests queued behind it must not starve other callers.
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let permits = cores.saturating_sub(1).max(1);
        let dummy = Argon2::default()
            .hash_password(b"unilink-dummy-password")
            .map_err(|e| AuthError::Internal(format!("argon2: {e}")))?
            .to_string();
        let parsed = PasswordHash::new(&dummy).map_err(|e| AuthError::Internal(format!("argon2: {e}")))?;
        let prefix = format!(
            "${}$v={}${}",
            parsed.algorithm,
            parsed.version.unwrap_or(19),
            parsed.params
        );
        Ok(PasswordHasher {
            permits: Arc::new(Semaphore::new(permits)),
            current_prefix: prefix.into(),
            dummy_hash: dummy.into(),
        })
    }

    async fn blocking<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, AuthError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| AuthError::Internal("password hasher closed".to_owned()))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| AuthError::Internal(format!("password hashing task failed: {e}")))
    }

    pub async fn hash(&self, password: &str) -> Result<String, AuthError> {
        let password = password.to_owned();
        self.blocking(move || {
            Argon2::default()
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
        })
        .await?
        .map_err(|e| AuthError::Internal(format!("argon2: {e}")))
    }

    /// Checks `password` against `stored` (or, with no account, against a
    /// dummy hash so the answer takes as long either way).
    pub async fn verify(&self, password: &str, stored: Option<&str>) -> Result<PasswordCheck, AuthError> {
        let exists = stored.is_some();
        let hash = stored.map_or_else(|| self.dummy_hash.to_string(), str::to_owned);
        let needs_rehash = exists && !hash.starts_with(&format!("{}$", self.current_prefix));
        let password = password.to_owned();
        let matches = self
            .blocking(move || {
                Argon2::default()
                    .verify_password(password.as_bytes(), hash.as_str())
                    .is_ok()
            })
            .await?;
        Ok(PasswordCheck {
            matches: matches && exists,
            needs_rehash: matches && exists && needs_rehash,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_hashed() {
        let a = random_token().unwrap();
        let b = random_token().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43, "256 bits in base64url");
        assert_eq!(token_hash(&a).len(), 64);
        assert_ne!(token_hash(&a), a);
    }

    #[test]
    fn codes_have_six_digits_and_keyed_hashes() {
        for _ in 0..100 {
            let otp = random_otp().unwrap();
            assert_eq!(otp.len(), 6);
            assert!(otp.chars().all(|c| c.is_ascii_digit()));
        }
        let h = otp_hash("k1", "u", "123456");
        assert!(same_hash(&h, &otp_hash("k1", "u", "123456")));
        assert!(!same_hash(&h, &otp_hash("k2", "u", "123456")));
        assert!(!same_hash(&h, &otp_hash("k1", "v", "123456")));
    }

    #[tokio::test]
    async fn passwords_hash_verify_and_flag_old_parameters() {
        let hasher = PasswordHasher::new().unwrap();
        let hash = hasher.hash("correct horse").await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        let ok = hasher.verify("correct horse", Some(&hash)).await.unwrap();
        assert_eq!(
            ok,
            PasswordCheck {
                matches: true,
                needs_rehash: false
            }
        );
        let bad = hasher.verify("wrong horse", Some(&hash)).await.unwrap();
        assert!(!bad.matches);
        let none = hasher.verify("correct horse", None).await.unwrap();
        assert!(!none.matches);

        let weak = Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            argon2::Params::new(8192, 1, 1, None).unwrap(),
        )
        .hash_password(b"correct horse")
        .unwrap()
        .to_string();
        let old = hasher.verify("correct horse", Some(&weak)).await.unwrap();
        assert_eq!(
            old,
            PasswordCheck {
                matches: true,
                needs_rehash: true
            }
        );
    }
}
