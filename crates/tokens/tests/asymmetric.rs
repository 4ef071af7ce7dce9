//! RS256 and EdDSA keys from PEM files (test-only keys in `fixtures/`),
//! rotation to a new key pair, and HS/asymmetric confusion.

use std::path::PathBuf;

use unilink_config::Settings;
use unilink_domain::UserId;
use unilink_tokens::{SigningKeys, TokenError, Verifier};

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

fn keys(vars: &[(&str, String)]) -> SigningKeys {
    let settings = Settings::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.clone()))).unwrap();
    SigningKeys::from_settings(&settings.jwt).unwrap()
}

fn verifier(keys: &SigningKeys) -> Verifier {
    Verifier::new(keys.public_keys().to_vec(), keys.issuer(), keys.audience()).unwrap()
}

#[test]
fn eddsa_and_rs256_tokens_verify_with_the_public_key_only() {
    for (alg, private, public) in [
        ("EdDSA", "ed25519-private.pem", "ed25519-public.pem"),
        ("RS256", "rsa-private.pem", "rsa-public.pem"),
    ] {
        let keys = keys(&[
            ("ALGORITHM", alg.to_owned()),
            ("JWT_PRIVATE_KEY_FILE", fixture(private)),
            ("JWT_PUBLIC_KEY_FILE", fixture(public)),
        ]);
        assert_eq!(keys.public_keys()[0].algorithm, alg);
        assert!(String::from_utf8_lossy(&keys.public_keys()[0].material).contains("PUBLIC KEY"));
        let user = UserId::new();
        let (token, _) = keys.issue(user, "user", "f").unwrap();
        assert_eq!(
            verifier(&keys).verify(&token).unwrap().user_id().unwrap(),
            user,
            "{alg}"
        );
    }
}

#[test]
fn a_rotated_key_pair_keeps_old_tokens_valid() {
    let old = keys(&[
        ("ALGORITHM", "EdDSA".to_owned()),
        ("JWT_PRIVATE_KEY_FILE", fixture("ed25519-old-private.pem")),
        ("JWT_PUBLIC_KEY_FILE", fixture("ed25519-old-public.pem")),
    ]);
    let (old_token, _) = old.issue(UserId::new(), "user", "f").unwrap();
    let new = keys(&[
        ("ALGORITHM", "EdDSA".to_owned()),
        ("JWT_PRIVATE_KEY_FILE", fixture("ed25519-private.pem")),
        ("JWT_PUBLIC_KEY_FILE", fixture("ed25519-public.pem")),
        ("JWT_PREVIOUS_PUBLIC_KEY_FILES", fixture("ed25519-old-public.pem")),
    ]);
    assert_eq!(new.public_keys().len(), 2);
    assert_eq!(new.public_keys()[1].algorithm, "EdDSA");
    assert!(verifier(&new).verify(&old_token).is_ok());
    let (new_token, _) = new.issue(UserId::new(), "user", "f").unwrap();
    assert!(verifier(&new).verify(&new_token).is_ok());
    assert_eq!(verifier(&old).verify(&new_token), Err(TokenError::UnknownKey));
}

#[test]
fn an_hs256_token_keyed_with_the_public_key_is_refused() {
    // The classic confusion attack: sign HS256 using the (public) PEM as the
    // HMAC secret and name the asymmetric key's kid.
    let keys = keys(&[
        ("ALGORITHM", "RS256".to_owned()),
        ("JWT_PRIVATE_KEY_FILE", fixture("rsa-private.pem")),
        ("JWT_PUBLIC_KEY_FILE", fixture("rsa-public.pem")),
    ]);
    let public = &keys.public_keys()[0];
    let (genuine, claims) = keys.issue(UserId::new(), "admin", "f").unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(public.kid.clone());
    let forged = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&public.material),
    )
    .unwrap();
    let v = verifier(&keys);
    assert!(v.verify(&genuine).is_ok());
    assert!(matches!(v.verify(&forged), Err(TokenError::Invalid(_))));
}
