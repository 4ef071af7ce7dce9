//! Secrets inside events, readable only by the service they are meant for.
//!
//! Login codes and verification tokens travel from auth to notification in
//! `events:auth`, a stream profile and signaling read too, and sit in
//! `auth.outbox` until the retention purge. So those fields are sealed:
//! ChaCha20-Poly1305 with a key only auth and notification hold
//! (`EVENT_SEAL_KEYS`), bound to the event type and user (a sealed code
//! cannot be moved into another event), with a random nonce per field.
//!
//! On the wire a sealed field is `{"sealed": "v1.<kid>.<base64url(nonce ‖
//! ciphertext ‖ tag)>"}`; `kid` names the key (the first 8 hex digits of its
//! SHA-256), so keys can rotate: the first key of the list seals, every key
//! opens. A plain string is still read (events a producer older than this
//! wrote) — see [`SealedText::open`].

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

const FORMAT: &str = "v1";
const KEY_LEN: usize = 32;

/// Why a field could not be sealed or opened, or keys not loaded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("EVENT_SEAL_KEYS is not set (auth and notification need the same key)")]
    NoKeys,
    #[error("EVENT_SEAL_KEYS entry {0}: {1}")]
    BadKey(usize, String),
    #[error("the sealed field is malformed")]
    Malformed,
    #[error("the sealed field was sealed with key {0}, which this service does not hold")]
    UnknownKey(String),
    #[error("the sealed field does not open (wrong key, or altered)")]
    Forged,
    #[error("no randomness for a nonce")]
    Random,
}

struct Key {
    kid: String,
    key: LessSafeKey,
}

/// The keys of `EVENT_SEAL_KEYS`.
pub struct SealKeys {
    keys: Vec<Key>,
    random: SystemRandom,
}

impl std::fmt::Debug for SealKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealKeys")
            .field("kids", &self.keys.iter().map(|k| &k.kid).collect::<Vec<_>>())
            .finish()
    }
}

impl SealKeys {
    /// Loads base64 (standard or URL-safe) 32-byte keys; the first seals.
    pub fn from_base64<S: AsRef<str>>(encoded: &[S]) -> Result<SealKeys, SealError> {
        if encoded.is_empty() {
            return Err(SealError::NoKeys);
        }
        let mut keys = Vec::with_capacity(encoded.len());
        for (index, text) in encoded.iter().enumerate() {
            let text = text.as_ref().trim();
            let bytes = STANDARD
                .decode(text)
                .or_else(|_| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')))
                .map_err(|_| SealError::BadKey(index + 1, "not base64".to_owned()))?;
            if bytes.len() != KEY_LEN {
                return Err(SealError::BadKey(
                    index + 1,
                    format!("{} bytes; a key is {KEY_LEN} random bytes", bytes.len()),
                ));
            }
            let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
            let kid: String = digest.as_ref()[..4].iter().map(|b| format!("{b:02x}")).collect();
            let unbound = UnboundKey::new(&CHACHA20_POLY1305, &bytes)
                .map_err(|_| SealError::BadKey(index + 1, "rejected by the cipher".to_owned()))?;
            keys.push(Key {
                kid,
                key: LessSafeKey::new(unbound),
            });
        }
        Ok(SealKeys {
            keys,
            random: SystemRandom::new(),
        })
    }

    /// The keys the settings name.
    pub fn from_settings(keys: &[unilink_config::Secret]) -> Result<SealKeys, SealError> {
        let exposed: Vec<&str> = keys.iter().map(|k| k.expose()).collect();
        SealKeys::from_base64(&exposed)
    }

    /// Seals `plaintext` for a field of the event `context` describes.
    pub fn seal(&self, plaintext: &str, context: &str) -> Result<SealedText, SealError> {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).map_err(|_| SealError::Random)?;
        let mut buffer = plaintext.as_bytes().to_vec();
        key.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buffer,
            )
            .map_err(|_| SealError::Forged)?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&buffer);
        Ok(SealedText::Sealed {
            sealed: format!("{FORMAT}.{}.{}", key.kid, URL_SAFE_NO_PAD.encode(blob)),
        })
    }

    fn open_blob(&self, sealed: &str, context: &str) -> Result<String, SealError> {
        let mut parts = sealed.splitn(3, '.');
        let (Some(FORMAT), Some(kid), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(SealError::Malformed);
        };
        let key = self
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or_else(|| SealError::UnknownKey(kid.to_owned()))?;
        let blob = URL_SAFE_NO_PAD.decode(body).map_err(|_| SealError::Malformed)?;
        if blob.len() < NONCE_LEN + CHACHA20_POLY1305.tag_len() {
            return Err(SealError::Malformed);
        }
        let (nonce, ciphertext) = blob.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Malformed)?;
        let mut buffer = ciphertext.to_vec();
        let plain = key
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buffer)
            .map_err(|_| SealError::Forged)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SealError::Malformed)
    }
}

/// A secret field of an event: sealed, or (written by an older producer)
/// plain.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SealedText {
    Sealed { sealed: String },
    Plain(String),
}

impl std::fmt::Debug for SealedText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SealedText::Sealed { .. } => f.write_str("SealedText::Sealed"),
            SealedText::Plain(_) => f.write_str("SealedText::Plain([redacted])"),
        }
    }
}

impl SealedText {
    /// The plaintext. A plain field is taken as it is: during a rolling
    /// deploy the stream still holds events from before sealing.
    pub fn open(&self, keys: &SealKeys, context: &str) -> Result<String, SealError> {
        match self {
            SealedText::Sealed { sealed } => keys.open_blob(sealed, context),
            SealedText::Plain(text) => Ok(text.clone()),
        }
    }
}

/// The context a secret field of `event_type` for `user_id` is bound to.
pub fn context(event_type: &str, user_id: &str) -> String {
    format!("{event_type}|{user_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "dW5pbGluay1kZXZlbG9wbWVudC1ldmVudC1zZWFsISE=";
    const KEY_B: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn a_sealed_field_opens_only_with_its_key_and_context() {
        let keys = SealKeys::from_base64(&[KEY_A]).unwrap();
        let sealed = keys.seal("123456", "user.login_otp_requested|u1").unwrap();
        let json = serde_json::to_string(&sealed).unwrap();
        assert!(!json.contains("123456"), "{json}");
        assert!(json.starts_with(r#"{"sealed":"v1."#), "{json}");
        let back: SealedText = serde_json::from_str(&json).unwrap();
        assert_eq!(back.open(&keys, "user.login_otp_requested|u1").unwrap(), "123456");
        // Another user's event, or another event type: refused.
        assert_eq!(back.open(&keys, "user.login_otp_requested|u2"), Err(SealError::Forged));
        // Another key: its kid is unknown.
        let other = SealKeys::from_base64(&[KEY_B]).unwrap();
        assert!(matches!(
            back.open(&other, "user.login_otp_requested|u1"),
            Err(SealError::UnknownKey(_))
        ));
        // Two seals of one code differ (random nonces).
        assert_ne!(sealed, keys.seal("123456", "user.login_otp_requested|u1").unwrap());
    }

    #[test]
    fn keys_rotate_the_first_seals_all_open() {
        let old = SealKeys::from_base64(&[KEY_A]).unwrap();
        let sealed_by_old = old.seal("tok", "c").unwrap();
        let rotated = SealKeys::from_base64(&[KEY_B, KEY_A]).unwrap();
        assert_eq!(sealed_by_old.open(&rotated, "c").unwrap(), "tok");
        let sealed_by_new = rotated.seal("tok", "c").unwrap();
        assert!(matches!(sealed_by_new.open(&old, "c"), Err(SealError::UnknownKey(_))));
    }

    #[test]
    fn altered_or_malformed_fields_are_refused() {
        let keys = SealKeys::from_base64(&[KEY_A]).unwrap();
        let SealedText::Sealed { sealed } = keys.seal("123456", "c").unwrap() else {
            unreachable!()
        };
        let mut altered = sealed.clone().into_bytes();
        let last = altered.len() - 2;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        let altered = SealedText::Sealed {
            sealed: String::from_utf8(altered).unwrap(),
        };
        assert_eq!(altered.open(&keys, "c"), Err(SealError::Forged));
        for bad in ["", "v1", "v2.x.y", "v1.zz.!!", "v1.abcd.AAAA"] {
            let field = SealedText::Sealed { sealed: bad.to_owned() };
            assert!(field.open(&keys, "c").is_err(), "{bad}");
        }
    }

    #[test]
    fn plain_fields_from_older_producers_still_read() {
        let keys = SealKeys::from_base64(&[KEY_A]).unwrap();
        let field: SealedText = serde_json::from_str(r#""654321""#).unwrap();
        assert_eq!(field.open(&keys, "c").unwrap(), "654321");
    }

    #[test]
    fn bad_keys_are_named() {
        assert_eq!(SealKeys::from_base64::<&str>(&[]).unwrap_err(), SealError::NoKeys);
        assert_eq!(
            SealKeys::from_base64(&[KEY_A, "c2hvcnQ="]).unwrap_err().to_string(),
            "EVENT_SEAL_KEYS entry 2: 5 bytes; a key is 32 random bytes"
        );
        assert_eq!(
            SealKeys::from_base64(&["not base64 !"]).unwrap_err().to_string(),
            "EVENT_SEAL_KEYS entry 1: not base64"
        );
    }
}
