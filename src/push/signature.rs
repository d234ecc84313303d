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

/// How far a signed request's `webhook-timestamp` may be from now, either
/// way (the spec's replay window).
pub const TOLERANCE_SECS: i64 = 5 * 60;
/// Most signatures one `webhook-signature` header may carry, and its
/// longest accepted form: room for key rotation, no more.
pub const MAX_SIGNATURES: usize = 8;
pub const MAX_SIGNATURE_HEADER_BYTES: usize = 1024;

/// Why a signed request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// A header missing or malformed (names it).
    Malformed(String),
    /// The timestamp is outside [`TOLERANCE_SECS`] of `now`.
    Stale,
    /// No `v1` signature matches.
    Mismatch,
}

/// Check a request signed per Standard Webhooks: `signatures` (the
/// `webhook-signature` header) must hold a `v1,<base64>` signature of
/// `msg_id.timestamp.body` under `key`, compared in constant time, and
/// `timestamp` must be within [`TOLERANCE_SECS`] of `now` (Unix seconds).
pub fn verify(
    key: &Key,
    msg_id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now: i64,
) -> Result<(), Refused> {
    let ts: i64 = timestamp
        .parse()
        .map_err(|_| Refused::Malformed("webhook-timestamp is not Unix seconds".into()))?;
    if signatures.len() > MAX_SIGNATURE_HEADER_BYTES {
        return Err(Refused::Malformed(format!(
            "webhook-signature is longer than {MAX_SIGNATURE_HEADER_BYTES} bytes"
        )));
    }
    if ts.abs_diff(now) > TOLERANCE_SECS as u64 {
        return Err(Refused::Stale);
    }
    let mut mac = key.clone();
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(ts.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let candidates: Vec<Vec<u8>> = signatures
        .split(' ')
        .filter(|s| !s.is_empty())
        .take(MAX_SIGNATURES)
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|b64| STANDARD.decode(b64).ok())
        .collect();
    // Every candidate is checked, so the time taken does not say which matched.
    let matched = candidates.iter().fold(false, |any, sig| {
        mac.clone().verify_slice(sig).is_ok() | any
    });
    if matched {
        Ok(())
    } else {
        Err(Refused::Mismatch)
    }
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
    fn verifies_what_it_signs_and_nothing_else() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let k = key(secret).expect("key");
        let body = br#"{"test": 2432232314}"#;
        let good = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        let ts = 1614265330;
        let ok = |sigs: &str, now: i64| {
            verify(
                &k,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                "1614265330",
                sigs,
                body,
                now,
            )
        };
        assert_eq!(ok(good, ts), Ok(()));
        assert_eq!(
            ok(&format!("v1,AAAA {good}"), ts + 299),
            Ok(()),
            "any of several"
        );
        assert_eq!(ok(good, ts + TOLERANCE_SECS + 1), Err(Refused::Stale));
        assert_eq!(ok(good, ts - TOLERANCE_SECS - 1), Err(Refused::Stale));
        assert_eq!(
            ok("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE", ts),
            Err(Refused::Mismatch)
        );
        assert_eq!(ok(&good.replace("v1,", "v2,"), ts), Err(Refused::Mismatch));
        assert_eq!(
            ok(&"v1,AAAA ".repeat(200), ts).map_err(|e| matches!(e, Refused::Malformed(_))),
            Err(true)
        );
        let other = verify(&k, "msg_other", "1614265330", good, body, ts);
        assert_eq!(other, Err(Refused::Mismatch));
        assert!(matches!(
            verify(&k, "m", "soon", good, body, ts),
            Err(Refused::Malformed(_))
        ));
    }

    #[test]
    fn one_signature_per_key() {
        let k = |b: u8| Key::new_from_slice(&[b; 24]).expect("hmac takes any key");
        let h = header(&[k(1), k(2)], "id", 1, b"x");
        assert_eq!(h.split(' ').count(), 2);
        assert!(h.split(' ').all(|s| s.starts_with("v1,")));
    }
}
