//! Standard Webhooks signatures (standard-webhooks `spec/standard-webhooks.md`):
//! `v1,<base64 HMAC-SHA256 of "<msg_id>.<timestamp>.<body>">`, keyed by the
//! bytes a `whsec_<base64>` secret encodes.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A secret's prefix.
pub const SECRET_PREFIX: &str = "whsec_";
/// Fewest and most key bytes a secret may encode.
pub const SECRET_BYTES: (usize, usize) = (24, 64);

/// The key bytes of a `whsec_` secret, or why it is not one.
pub fn decode_secret(secret: &str) -> Result<Vec<u8>, String> {
    let Some(b64) = secret.strip_prefix(SECRET_PREFIX) else {
        return Err(format!("does not start with {SECRET_PREFIX:?}"));
    };
    let key = STANDARD
        .decode(b64)
        .map_err(|_| format!("is not {SECRET_PREFIX:?} followed by standard base64"))?;
    let (lo, hi) = SECRET_BYTES;
    if key.len() < lo || key.len() > hi {
        return Err(format!(
            "encodes {} bytes; a secret encodes {lo} to {hi} bytes",
            key.len()
        ));
    }
    Ok(key)
}

/// The HMAC state after absorbing a secret's key bytes: cloned for each
/// signature, so the key is hashed once.
pub type Key = Hmac<Sha256>;

/// The signing key of a `whsec_` secret, or why it is not one.
pub fn key(secret: &str) -> Result<Key, String> {
    let bytes = decode_secret(secret)?;
    Key::new_from_slice(&bytes).map_err(|e| format!("is not a usable key: {e}"))
}

/// The Standard Webhooks signature (`v1,<base64>`) of `body` sent as
/// `msg_id` at `timestamp` (Unix seconds) under the `whsec_` `secret`.
pub fn sign(secret: &str, msg_id: &str, timestamp: i64, body: &[u8]) -> Result<String, String> {
    Ok(sign_with(&key(secret)?, msg_id, timestamp, body))
}

/// [`sign`] with a key already made.
pub fn sign_with(key: &Key, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = key.clone();
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The `webhook-signature` header value: one signature per key, space-separated.
pub fn header(keys: &[Key], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter()
        .map(|k| sign_with(k, msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks reference libraries' tests.
    #[test]
    fn signs_as_the_reference_implementations() {
        let sig = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(
            sig.as_deref(),
            Ok("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
    }

    #[test]
    fn refuses_bad_secrets() {
        assert!(decode_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(decode_secret("whsec_!!!").is_err());
        let short = format!("whsec_{}", STANDARD.encode([0u8; 23]));
        assert!(decode_secret(&short).unwrap_err().contains("23 bytes"));
        let long = format!("whsec_{}", STANDARD.encode([0u8; 65]));
        assert!(decode_secret(&long).is_err());
        let ok = format!("whsec_{}", STANDARD.encode([7u8; 32]));
        assert_eq!(decode_secret(&ok).map(|k| k.len()), Ok(32));
    }

    #[test]
    fn one_signature_per_key() {
        let k = |b: u8| Key::new_from_slice(&[b; 24]).expect("hmac takes any key");
        let h = header(&[k(1), k(2)], "id", 1, b"x");
        assert_eq!(h.split(' ').count(), 2);
        assert!(h.split(' ').all(|s| s.starts_with("v1,")));
    }
}
