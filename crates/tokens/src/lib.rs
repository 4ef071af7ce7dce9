//! Access tokens: what they claim, how auth signs them and how the gateway
//! verifies them without a call per request.
//!
//! * [`Claims`] — `sub` (user id), `exp`, `iat`, `nbf`, `jti`, `role`, `fid`
//!   (the refresh-token family, so logout can revoke it), `iss`, `aud`.
//! * [`SigningKeys`] — built by auth from the settings: the current key
//!   (HS256 from `SECRET_KEY`, or RS256/EdDSA from PEM files) and every key
//!   still accepted (previous secrets / public keys), each with a `kid`
//!   derived from the key itself.
//! * [`Verifier`] — built by the gateway from the [`PublicKey`]s auth hands
//!   out. It trusts the algorithm of the key found by `kid`, never the token's
//!   header: `alg: none`, HS/RS confusion and unknown kids are all refused.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use unilink_config::{JwtAlgorithm, JwtSettings};
use unilink_domain::UserId;

/// Why a token or key was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token is signed with an unknown key")]
    UnknownKey,
    #[error("token is invalid: {0}")]
    Invalid(String),
    #[error("token has expired")]
    Expired,
    #[error("cannot load signing key: {0}")]
    Key(String),
}

/// The claims of a UniLink access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    pub iat: u64,
    pub nbf: u64,
    pub jti: String,
    pub role: String,
    /// Refresh-token family this access token belongs to.
    pub fid: String,
    pub iss: String,
    pub aud: String,
}

impl Claims {
    pub fn user_id(&self) -> Result<UserId, TokenError> {
        UserId::parse(&self.sub).map_err(|_| TokenError::Invalid("sub is not a user id".to_owned()))
    }

    pub fn is_admin(&self) -> bool {
        self.role == "admin"
    }

    /// Time left before expiry (zero when expired).
    pub fn remaining(&self) -> Duration {
        Duration::from_secs(self.exp.saturating_sub(now()))
    }
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A verification key as auth hands it to the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub kid: String,
    /// `HS256`, `RS256` or `EdDSA`.
    pub algorithm: String,
    /// The HS256 secret, or the PEM public key.
    pub material: Vec<u8>,
}

fn kid_of(algorithm: &str, material: &[u8]) -> String {
    let digest = Sha256::new()
        .chain_update(algorithm.as_bytes())
        .chain_update(material)
        .finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn jwt_algorithm(name: &str) -> Result<Algorithm, TokenError> {
    match name {
        "HS256" => Ok(Algorithm::HS256),
        "RS256" => Ok(Algorithm::RS256),
        "EdDSA" => Ok(Algorithm::EdDSA),
        other => Err(TokenError::Key(format!("unsupported algorithm {other}"))),
    }
}

fn algorithm_name(algorithm: JwtAlgorithm) -> &'static str {
    match algorithm {
        JwtAlgorithm::Hs256 => "HS256",
        JwtAlgorithm::Rs256 => "RS256",
        JwtAlgorithm::EdDsa => "EdDSA",
    }
}

fn read_pem(path: &std::path::Path) -> Result<Vec<u8>, TokenError> {
    std::fs::read(path).map_err(|e| TokenError::Key(format!("{}: {e}", path.display())))
}

/// Auth's signing key and every key the fleet still accepts.
pub struct SigningKeys {
    kid: String,
    algorithm: Algorithm,
    encoding: EncodingKey,
    public: Vec<PublicKey>,
    issuer: String,
    audience: String,
    ttl: Duration,
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeys")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("accepted", &self.public.iter().map(|k| &k.kid).collect::<Vec<_>>())
            .finish()
    }
}

impl SigningKeys {
    /// Loads keys as configured (`ALGORITHM`, `SECRET_KEY`, `JWT_*`).
    pub fn from_settings(settings: &JwtSettings) -> Result<SigningKeys, TokenError> {
        let name = algorithm_name(settings.algorithm);
        let algorithm = jwt_algorithm(name)?;
        let (encoding, current) = match settings.algorithm {
            JwtAlgorithm::Hs256 => {
                let secret = settings
                    .secret_key
                    .as_ref()
                    .ok_or_else(|| TokenError::Key("SECRET_KEY is not set (HS256 signs with it)".to_owned()))?
                    .expose()
                    .as_bytes()
                    .to_vec();
                (EncodingKey::from_secret(&secret), secret)
            }
            JwtAlgorithm::Rs256 | JwtAlgorithm::EdDsa => {
                let private = settings
                    .private_key_file
                    .as_deref()
                    .ok_or_else(|| TokenError::Key("JWT_PRIVATE_KEY_FILE is not set".to_owned()))?;
                let public = settings
                    .public_key_file
                    .as_deref()
                    .ok_or_else(|| TokenError::Key("JWT_PUBLIC_KEY_FILE is not set".to_owned()))?;
                let private_pem = read_pem(private)?;
                let encoding = if settings.algorithm == JwtAlgorithm::Rs256 {
                    EncodingKey::from_rsa_pem(&private_pem)
                } else {
                    EncodingKey::from_ed_pem(&private_pem)
                }
                .map_err(|e| TokenError::Key(format!("JWT_PRIVATE_KEY_FILE: {e}")))?;
                (encoding, read_pem(public)?)
            }
        };
        let kid = kid_of(name, &current);
        let mut public = vec![PublicKey {
            kid: kid.clone(),
            algorithm: name.to_owned(),
            material: current,
        }];
        for old in &settings.previous_secret_keys {
            let material = old.expose().as_bytes().to_vec();
            public.push(PublicKey {
                kid: kid_of("HS256", &material),
                algorithm: "HS256".to_owned(),
                material,
            });
        }
        for path in &settings.previous_public_key_files {
            let material = read_pem(path)?;
            // The PEM says which kind of key it is.
            let algorithm = if DecodingKey::from_ed_pem(&material).is_ok() {
                "EdDSA"
            } else if DecodingKey::from_rsa_pem(&material).is_ok() {
                "RS256"
            } else {
                return Err(TokenError::Key(format!(
                    "{}: neither an Ed25519 nor an RSA public key",
                    path.display()
                )));
            };
            public.push(PublicKey {
                kid: kid_of(algorithm, &material),
                algorithm: algorithm.to_owned(),
                material,
            });
        }
        // The verifier must be able to load every key it is handed.
        Verifier::new(public.clone(), &settings.issuer, &settings.audience)?;
        Ok(SigningKeys {
            kid,
            algorithm,
            encoding,
            public,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            ttl: settings.access_token_ttl,
        })
    }

    /// Signs an access token for `user`; returns it with its claims.
    pub fn issue(&self, user: UserId, role: &str, family: &str) -> Result<(String, Claims), TokenError> {
        let now = now();
        let claims = Claims {
            sub: user.to_string(),
            exp: now + self.ttl.as_secs(),
            iat: now,
            nbf: now,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            role: role.to_owned(),
            fid: family.to_owned(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
        };
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        let token =
            jsonwebtoken::encode(&header, &claims, &self.encoding).map_err(|e| TokenError::Key(e.to_string()))?;
        Ok((token, claims))
    }

    /// Access-token lifetime.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Every key tokens may be verified with (current first).
    pub fn public_keys(&self) -> &[PublicKey] {
        &self.public
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }
}

/// Verifies access tokens against a set of keys.
pub struct Verifier {
    keys: HashMap<String, (Algorithm, DecodingKey)>,
    issuer: String,
    audience: String,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Verifier {
    pub fn new(keys: Vec<PublicKey>, issuer: &str, audience: &str) -> Result<Verifier, TokenError> {
        let mut map = HashMap::new();
        for key in keys {
            let algorithm = jwt_algorithm(&key.algorithm)?;
            let decoding = match algorithm {
                Algorithm::HS256 => DecodingKey::from_secret(&key.material),
                Algorithm::RS256 => DecodingKey::from_rsa_pem(&key.material)
                    .map_err(|e| TokenError::Key(format!("key {}: {e}", key.kid)))?,
                _ => DecodingKey::from_ed_pem(&key.material)
                    .map_err(|e| TokenError::Key(format!("key {}: {e}", key.kid)))?,
            };
            map.insert(key.kid, (algorithm, decoding));
        }
        Ok(Verifier {
            keys: map,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        })
    }

    /// Whether a key with this id is known.
    pub fn knows(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    /// The `kid` of a token's header, without verifying anything.
    pub fn kid_of(token: &str) -> Result<Option<String>, TokenError> {
        jsonwebtoken::decode_header(token)
            .map(|h| h.kid)
            .map_err(|_| TokenError::Malformed)
    }

    /// Verifies signature (with the algorithm of the key named by `kid`),
    /// expiry, not-before, issuer and audience.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        let (algorithm, key) = self.keys.get(&kid).ok_or(TokenError::UnknownKey)?;
        if header.alg != *algorithm {
            return Err(TokenError::Invalid(format!(
                "algorithm {:?} does not match the key",
                header.alg
            )));
        }
        let mut validation = Validation::new(*algorithm);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.validate_nbf = true;
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "sub", "iss", "aud"]);
        match jsonwebtoken::decode::<Claims>(token, key, &validation) {
            Ok(data) => Ok(data.claims),
            Err(e) => match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => Err(TokenError::Expired),
                _ => Err(TokenError::Invalid(e.to_string())),
            },
        }
    }
}

/// Redis key (before the prefix) refusing every access token of a user
/// (deactivated or deleted) for as long as any of them can live.
pub fn revoked_user_key(user: &str) -> String {
    format!("revoked:user:{user}")
}

/// Redis key (before the prefix) refusing every access token of a session
/// (its `fid`: logged out in full, or its refresh token was replayed).
pub fn revoked_family_key(family: &str) -> String {
    format!("revoked:fid:{family}")
}

/// Redis key (before the prefix) marking an access token revoked until it expires.
pub fn revoked_jti_key(jti: &str) -> String {
    format!("revoked:jti:{jti}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use unilink_config::Settings;

    fn keys(extra: &[(&str, &str)]) -> SigningKeys {
        let mut vars = vec![("SECRET_KEY", "0123456789abcdef0123456789abcdef")];
        vars.extend_from_slice(extra);
        SigningKeys::from_settings(&Settings::from_vars(vars).unwrap().jwt).unwrap()
    }

    fn verifier_for(keys: &SigningKeys) -> Verifier {
        Verifier::new(keys.public_keys().to_vec(), keys.issuer(), keys.audience()).unwrap()
    }

    #[test]
    fn issued_tokens_verify() {
        let keys = keys(&[]);
        let user = UserId::new();
        let (token, claims) = keys.issue(user, "user", "fam").unwrap();
        let verified = verifier_for(&keys).verify(&token).unwrap();
        assert_eq!(verified, claims);
        assert_eq!(verified.user_id().unwrap(), user);
        assert!(verified.remaining() > Duration::from_secs(60));
    }

    #[test]
    fn tampered_and_foreign_tokens_are_refused() {
        let keys = keys(&[]);
        let verifier = verifier_for(&keys);
        let (token, _) = keys.issue(UserId::new(), "user", "f").unwrap();
        // Change the role in the payload, keep the signature.
        let parts: Vec<&str> = token.split('.').collect();
        use base64_shim::*;
        let mut payload: serde_json::Value = serde_json::from_slice(&decode(parts[1])).unwrap();
        payload["role"] = "admin".into();
        let forged = format!("{}.{}.{}", parts[0], encode(payload.to_string().as_bytes()), parts[2]);
        assert!(matches!(verifier.verify(&forged), Err(TokenError::Invalid(_))));

        // alg: none
        let header = encode(br#"{"alg":"none","typ":"JWT","kid":"x"}"#);
        let none = format!("{header}.{}.", parts[1]);
        assert!(verifier.verify(&none).is_err());

        // Signed with another secret under our kid.
        let other = keys_with_secret("another-secret-another-secret-123");
        let (theirs, _) = other.issue(UserId::new(), "admin", "f").unwrap();
        assert_eq!(verifier.verify(&theirs), Err(TokenError::UnknownKey));
        assert_eq!(verifier.verify("not.a.token"), Err(TokenError::Malformed));
    }

    fn keys_with_secret(secret: &str) -> SigningKeys {
        SigningKeys::from_settings(&Settings::from_vars([("SECRET_KEY", secret)]).unwrap().jwt).unwrap()
    }

    #[test]
    fn previous_secrets_keep_verifying_after_rotation() {
        let old = keys_with_secret("old-secret-old-secret-old-secret-1");
        let (token, _) = old.issue(UserId::new(), "user", "f").unwrap();
        let rotated = keys(&[("JWT_PREVIOUS_SECRET_KEYS", "old-secret-old-secret-old-secret-1")]);
        assert!(verifier_for(&rotated).verify(&token).is_ok());
        let (new_token, _) = rotated.issue(UserId::new(), "user", "f").unwrap();
        assert_ne!(Verifier::kid_of(&new_token).unwrap(), Verifier::kid_of(&token).unwrap());
    }

    #[test]
    fn wrong_issuer_or_audience_is_refused() {
        let keys = keys(&[("JWT_AUDIENCE", "someone-else")]);
        let (token, _) = keys.issue(UserId::new(), "user", "f").unwrap();
        let strict = Verifier::new(keys.public_keys().to_vec(), keys.issuer(), "unilink-api").unwrap();
        assert!(matches!(strict.verify(&token), Err(TokenError::Invalid(_))));
    }

    mod base64_shim {
        //! Minimal base64url for the tests (no padding).
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

        pub fn encode(input: &[u8]) -> String {
            let mut out = String::new();
            for chunk in input.chunks(3) {
                let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
                let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
                for i in 0..=chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                }
            }
            out
        }

        pub fn decode(input: &str) -> Vec<u8> {
            let mut bits = 0u32;
            let mut count = 0;
            let mut out = Vec::new();
            for c in input.bytes() {
                let v = ALPHABET.iter().position(|&a| a == c).unwrap() as u32;
                bits = (bits << 6) | v;
                count += 6;
                if count >= 8 {
                    count -= 8;
                    out.push((bits >> count) as u8);
                }
            }
            out
        }
    }
}
