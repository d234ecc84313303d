//! Receipts: self-contained, signed tokens naming one delivery, so that any
//! leanmqd replica can ack, nack or extend it with no shared memory, and no
//! client can make one up.
//!
//! A receipt is base64url (no padding) of the body
//! `2\n{queue}\n{group}\n{entry id}\n{attempt}` followed by the first
//! [`TAG_BYTES`] bytes of the body's HMAC-SHA256 under the replicas' shared
//! key. A delivery with an ordering key gets version 3, the same body with
//! `\n{ordering key}` after the attempt: the ack then knows the key, which
//! it needs to let the key's next message go, without reading the entry
//! back from the stream (a Redis call per message, issue #19). Only keyed
//! deliveries get it, so a replica of a version before ordering keys still
//! settles every unkeyed one during a rolling upgrade. A key longer than a
//! Send may give ([`MAX_ORDERING_KEY_BYTES`], so only one another program
//! wrote into the stream) gets version 2, so that the receipt stays small
//! enough to settle; its ack reads the key back.
//!
//! The pair (entry id, attempt) names one delivery: Redis counts
//! deliveries per pending entry, so a receipt from before a redelivery no
//! longer matches the entry's count (or holder) and is recognized as stale.
//!
//! **Keys.** [`Keys`] is a list: the first signs, every one verifies, so a
//! key can be rotated in without breaking receipts already handed out
//! (docs/operations.md, "Receipt keys"). They come from `--receipt-key` /
//! `--receipt-key-file`, or, when neither is set, from Redis: the first
//! replica to start stores a random key at `{prefix}receipt-key` (SET NX)
//! and every replica reads it back ([`Broker::shared_receipt_key`]).
//!
//! **Unsigned receipts** (`1\n…`, what leanmqd issued before signing) are
//! refused with INVALID_ARGUMENT unless `--accept-unsigned-receipts` is
//! set: anyone can write one, which is what signing is for. Refusing them
//! during a rolling upgrade costs at most one redelivery of each message in
//! flight (its lease runs out and it is delivered again with a signed
//! receipt); nothing is lost.

use std::fmt;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::limits::MAX_ORDERING_KEY_BYTES;
use super::Broker;
use crate::error::{Error, Result};
use crate::routing;
use crate::shutdown::Drain;

/// A decoded receipt.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Receipt {
    /// Queue name (no prefix).
    pub queue: String,
    /// Consumer group (resolved, never empty).
    pub group: String,
    /// Stream entry id, `ms-seq`.
    pub id: String,
    /// Delivery count of the entry in its group when this delivery was made.
    pub attempt: u32,
    /// The entry's ordering key, signed with the rest (version 3); `None`
    /// for an unkeyed delivery or a version 2 receipt.
    pub ordering_key: Option<String>,
}

/// Longest receipt accepted, in bytes (a bound on decoding work).
const MAX_RECEIPT_BYTES: usize = 8 * 1024;
/// Bytes of the HMAC-SHA256 kept in a receipt: 128 bits, as forgeable as
/// guessing a random 128-bit number.
pub const TAG_BYTES: usize = 16;
/// Shortest key accepted, in bytes: 256 bits of a random hex or base64 key.
pub const MIN_KEY_BYTES: usize = 32;
/// Longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Most keys in force at once (a bound on the work of verifying a forgery).
pub const MAX_KEYS: usize = 16;
/// The Redis key (after the prefix) holding the shared key when none is
/// configured. Its `-` keeps it apart from every queue's keys: queue names
/// hold only alphanumerics and `_` (see `routing`).
pub const SHARED_KEY_NAME: &str = "receipt-key";

/// The HMAC state after absorbing a key: cloned for each receipt, so the
/// key is hashed once, not once per delivery.
type Signer = Hmac<Sha256>;

/// The keys receipts are signed and verified with.
#[derive(Clone)]
pub struct Keys {
    /// Keyed HMAC states; the first signs.
    macs: Vec<Signer>,
    /// `--accept-unsigned-receipts`: take version-1 receipts (a rolling
    /// upgrade from a leanmqd that did not sign).
    accept_unsigned: bool,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the keys themselves.
        f.debug_struct("Keys")
            .field("count", &self.macs.len())
            .field("accept_unsigned", &self.accept_unsigned)
            .finish()
    }
}

impl Keys {
    /// Keys in order of preference: the first signs, all verify. Each must
    /// be [`MIN_KEY_BYTES`]..=[`MAX_KEY_BYTES`] bytes; at most [`MAX_KEYS`].
    pub fn new<K: AsRef<[u8]>>(
        keys: impl IntoIterator<Item = K>,
        accept_unsigned: bool,
    ) -> std::result::Result<Keys, String> {
        let mut macs = Vec::new();
        for (i, k) in keys.into_iter().enumerate() {
            let k = k.as_ref();
            if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&k.len()) {
                return Err(format!(
                    "receipt key {} is {} bytes; a key is {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes (e.g. `openssl rand -hex 32`)",
                    i + 1,
                    k.len()
                ));
            }
            macs.push(
                Signer::new_from_slice(k).map_err(|e| format!("receipt key {}: {e}", i + 1))?,
            );
        }
        if macs.is_empty() {
            return Err("no receipt key given".into());
        }
        if macs.len() > MAX_KEYS {
            return Err(format!(
                "{} receipt keys; at most {MAX_KEYS} may be in force at once",
                macs.len()
            ));
        }
        Ok(Keys {
            macs,
            accept_unsigned,
        })
    }

    /// The tag of `body` under the signing key.
    fn tag(&self, body: &[u8]) -> [u8; TAG_BYTES] {
        let mut mac = self.macs[0].clone();
        mac.update(body);
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; TAG_BYTES];
        tag.copy_from_slice(&full[..TAG_BYTES]);
        tag
    }

    /// Does `tag` sign `body` under any key? Compared in constant time.
    fn verifies(&self, body: &[u8], tag: &[u8]) -> bool {
        self.macs.iter().any(|m| {
            let mut mac = m.clone();
            mac.update(body);
            mac.verify_truncated_left(tag).is_ok()
        })
    }
}

impl Receipt {
    pub fn encode(&self, keys: &Keys) -> String {
        Self::encode_parts(
            keys,
            &self.queue,
            &self.group,
            &self.id,
            self.attempt,
            self.ordering_key.as_deref(),
        )
    }

    /// [`Receipt::encode`] from borrowed parts: every delivery makes one, so
    /// it builds no `Receipt` and no intermediate `String`: one buffer, one
    /// HMAC, one base64 string.
    pub fn encode_parts(
        keys: &Keys,
        queue: &str,
        group: &str,
        id: &str,
        attempt: u32,
        ordering_key: Option<&str>,
    ) -> String {
        let key = ordering_key.filter(|k| !k.is_empty() && k.len() <= MAX_ORDERING_KEY_BYTES);
        let key_len = key.map_or(0, |k| k.len() + 1);
        let mut raw =
            Vec::with_capacity(queue.len() + group.len() + id.len() + key_len + 16 + TAG_BYTES);
        for part in [
            if key.is_some() { b"3" } else { b"2" }.as_slice(),
            queue.as_bytes(),
            group.as_bytes(),
            id.as_bytes(),
        ] {
            raw.extend_from_slice(part);
            raw.push(b'\n');
        }
        // Writing to a Vec cannot fail.
        let _ = write!(raw, "{attempt}");
        if let Some(k) = key {
            raw.push(b'\n');
            raw.extend_from_slice(k.as_bytes());
        }
        let tag = keys.tag(&raw);
        raw.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(raw)
    }

    pub fn decode(keys: &Keys, token: &str) -> Result<Receipt> {
        let bad = |why: &str| Error::invalid(format!("malformed receipt: {why}"));
        if token.is_empty() {
            return Err(bad("empty"));
        }
        if token.len() > MAX_RECEIPT_BYTES {
            return Err(bad("too long"));
        }
        let raw = URL_SAFE_NO_PAD
            .decode(token.as_bytes())
            .map_err(|_| bad("not base64url"))?;
        match raw.first() {
            Some(v @ (b'2' | b'3')) => {
                let Some(split) = raw.len().checked_sub(TAG_BYTES) else {
                    return Err(bad("too short"));
                };
                let (body, tag) = raw.split_at(split);
                if !keys.verifies(body, tag) {
                    return Err(Error::invalid(
                        "receipt signature does not verify: it was altered or forged, or signed with a key this leanmqd does not hold (--receipt-key)",
                    ));
                }
                fields(body, if *v == b'3' { "3" } else { "2" })
            }
            Some(b'1') if keys.accept_unsigned => fields(&raw, "1"),
            Some(b'1') => Err(Error::invalid(
                "unsigned receipt (version 1, from an older leanmqd) refused; it is delivered again with a signed one when its lease runs out (--accept-unsigned-receipts takes them during an upgrade)",
            )),
            _ => Err(bad("unknown version")),
        }
    }
}

/// The fields of a receipt body whose version is `version`.
fn fields(body: &[u8], version: &str) -> Result<Receipt> {
    let bad = |why: &str| Error::invalid(format!("malformed receipt: {why}"));
    let text = std::str::from_utf8(body).map_err(|_| bad("not UTF-8"))?;
    // Version 3's last field, the ordering key, is the rest of the body.
    let mut parts = text.splitn(6, '\n');
    let (Some(v), Some(queue), Some(group), Some(id), Some(attempt), key) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(bad("wrong number of fields"));
    };
    if v != version {
        return Err(bad("unknown version"));
    }
    let ordering_key = match (version, key) {
        ("3", Some(k)) if !k.is_empty() => Some(k.to_string()),
        ("3", _) => return Err(bad("no ordering key")),
        (_, None) => None,
        (_, Some(_)) => return Err(bad("wrong number of fields")),
    };
    if routing::check_queue_name(queue).is_err() {
        return Err(bad("bad queue name"));
    }
    if group.is_empty() || routing::check_name("group", group).is_err() {
        return Err(bad("bad group"));
    }
    if !is_entry_id(id) {
        return Err(bad("bad entry id"));
    }
    let attempt: u32 = attempt.parse().map_err(|_| bad("bad attempt"))?;
    if attempt == 0 {
        return Err(bad("bad attempt"));
    }
    Ok(Receipt {
        queue: queue.to_string(),
        group: group.to_string(),
        id: id.to_string(),
        attempt,
        ordering_key,
    })
}

/// A Redis stream entry id: `<u64>-<u64>`.
pub fn is_entry_id(id: &str) -> bool {
    match id.split_once('-') {
        Some((ms, seq)) => ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok(),
        None => false,
    }
}

/// How often a replica checks that the shared key is still in Redis.
const KEEP_EVERY: Duration = Duration::from_secs(1);

/// Where the edge takes its keys from: given at start, or the key shared
/// through Redis, fetched at start or on first use, whichever comes first
/// (so leanmqd starts while Redis is down, as it always has), and kept.
pub struct KeySource {
    configured: Option<Arc<Keys>>,
    shared: tokio::sync::OnceCell<Shared>,
    broker: Arc<Broker>,
    accept_unsigned: bool,
}

/// The key read from Redis, and the keys made of it.
struct Shared {
    keys: Arc<Keys>,
    secret: String,
}

impl KeySource {
    /// `configured`: keys from the flags; `None` to share one through Redis.
    pub fn new(configured: Option<Keys>, broker: Arc<Broker>, accept_unsigned: bool) -> Self {
        KeySource {
            configured: configured.map(Arc::new),
            shared: tokio::sync::OnceCell::new(),
            broker,
            accept_unsigned,
        }
    }

    /// The keys in force; the first call without configured keys asks Redis
    /// (an unreachable Redis is UNAVAILABLE, and the next call asks again).
    pub async fn keys(&self) -> Result<&Arc<Keys>> {
        if let Some(k) = &self.configured {
            return Ok(k);
        }
        let shared = self
            .shared
            .get_or_try_init(|| async {
                let secret = self.broker.shared_receipt_key().await?;
                Keys::new([&secret], self.accept_unsigned)
                    .map(|k| Shared {
                        keys: Arc::new(k),
                        secret,
                    })
                    .map_err(|e| {
                        Error::FailedPrecondition(format!(
                            "the receipt key in Redis ({}{SHARED_KEY_NAME}) is unusable: {e}; delete it to have a new one made, or set --receipt-key",
                            self.broker.settings.prefix
                        ))
                    })
            })
            .await?;
        Ok(&shared.keys)
    }

    /// Until the drain: read (or make) the shared key as soon as Redis
    /// answers, then put it back (SET NX) whenever Redis has lost it (a
    /// restart without persistence, a FLUSHALL), so that a replica started
    /// afterwards reads the key the running ones sign with rather than
    /// making another. Nothing to do with configured keys.
    pub async fn keep_shared(self: Arc<Self>, drain: Drain) {
        if self.configured.is_some() {
            return;
        }
        loop {
            match self.shared.get() {
                None => {
                    if let Err(e) = self.keys().await {
                        tracing::debug!("receipt key not read yet: {e}");
                    }
                }
                Some(s) => {
                    if let Err(e) = self.broker.restore_receipt_key(&s.secret).await {
                        tracing::debug!("receipt key not checked: {e}");
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(KEEP_EVERY) => {}
                _ = drain.draining() => return,
            }
        }
    }
}

impl Broker {
    /// The receipt key every replica shares when none is configured: the
    /// first replica to ask stores a random 256-bit key (64 hex digits) at
    /// `{prefix}receipt-key` with SET NX; every replica then reads back
    /// whichever key won.
    pub async fn shared_receipt_key(&self) -> Result<String> {
        let key = format!("{}{SHARED_KEY_NAME}", self.settings.prefix);
        let fresh = hex::encode(rand::random::<[u8; 32]>());
        let _: Option<String> = self
            .query(::redis::cmd("SET").arg(&key).arg(&fresh).arg("NX"))
            .await?;
        let got: Option<String> = self.query(::redis::cmd("GET").arg(&key)).await?;
        let got = got.ok_or_else(|| {
            Error::Unavailable(format!("{key} vanished between SET NX and GET; retry"))
        })?;
        if got == fresh {
            tracing::info!(%key, "made the shared receipt key");
        }
        Ok(got)
    }

    /// Put `secret` back as the shared receipt key if Redis has none.
    pub async fn restore_receipt_key(&self, secret: &str) -> Result<()> {
        let key = format!("{}{SHARED_KEY_NAME}", self.settings.prefix);
        let set: Option<String> = self
            .query(::redis::cmd("SET").arg(&key).arg(secret).arg("NX"))
            .await?;
        if set.is_some() {
            tracing::warn!(%key, "the shared receipt key was gone from Redis; put it back");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::new(["k".repeat(MIN_KEY_BYTES)], false).expect("key")
    }

    fn forge(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn round_trips() {
        let r = Receipt {
            queue: "order_status".into(),
            group: "billing:v2".into(),
            id: "1732800000000-7".into(),
            attempt: 3,
            ordering_key: None,
        };
        assert_eq!(Receipt::decode(&keys(), &r.encode(&keys())).ok(), Some(r));
    }

    #[test]
    fn a_keyed_delivery_gets_version_3_with_its_key_signed() {
        let token = Receipt::encode_parts(&keys(), "q", "q-group", "1-0", 2, Some("order/7"));
        let raw = URL_SAFE_NO_PAD.decode(&token).expect("base64url");
        let body = b"3\nq\nq-group\n1-0\n2\norder/7";
        assert_eq!(raw[..raw.len() - TAG_BYTES], body[..]);
        let r = Receipt::decode(&keys(), &token).expect("decodes");
        assert_eq!(r.ordering_key.as_deref(), Some("order/7"));
        assert_eq!((r.id.as_str(), r.attempt), ("1-0", 2));
        // An empty key is no key: version 2, as before ordering keys.
        let plain = Receipt::encode_parts(&keys(), "q", "q-group", "1-0", 2, Some(""));
        assert_eq!(
            plain,
            Receipt::encode_parts(&keys(), "q", "q-group", "1-0", 2, None)
        );
    }

    #[test]
    fn a_key_longer_than_a_send_may_give_stays_out_of_the_receipt() {
        let longest = "k".repeat(MAX_ORDERING_KEY_BYTES);
        let r = Receipt::decode(
            &keys(),
            &Receipt::encode_parts(&keys(), "q", "g", "1-0", 1, Some(&longest)),
        )
        .expect("decodes");
        assert_eq!(r.ordering_key.as_deref(), Some(longest.as_str()));
        // One byte more (or 100 KiB, as a foreign XADD may write): version 2,
        // well under the receipt bound, still a receipt that settles.
        for len in [MAX_ORDERING_KEY_BYTES + 1, 100 * 1024] {
            let token = Receipt::encode_parts(&keys(), "q", "g", "1-0", 1, Some(&"k".repeat(len)));
            assert!(
                token.len() < MAX_RECEIPT_BYTES,
                "{len}: {} bytes",
                token.len()
            );
            let r = Receipt::decode(&keys(), &token).expect("decodes");
            assert_eq!((r.ordering_key, r.attempt), (None, 1), "{len}");
        }
    }

    #[test]
    fn a_version_3_body_without_a_key_or_a_version_2_with_one_is_refused() {
        let k = keys();
        for body in ["3\nq\ng\n1-0\n1", "3\nq\ng\n1-0\n1\n", "2\nq\ng\n1-0\n1\nk"] {
            let mut raw = body.as_bytes().to_vec();
            raw.extend_from_slice(&k.tag(body.as_bytes()));
            let err = Receipt::decode(&k, &URL_SAFE_NO_PAD.encode(&raw)).expect_err(body);
            assert!(
                err.to_string().contains("malformed receipt"),
                "{body}: {err}"
            );
        }
    }

    #[test]
    fn encodes_the_documented_layout() {
        for attempt in [1, 9, 10, 4_294_967_295] {
            let token = Receipt::encode_parts(&keys(), "q", "q-group", "1-0", attempt, None);
            let raw = URL_SAFE_NO_PAD.decode(token).expect("base64url");
            let body = format!("2\nq\nq-group\n1-0\n{attempt}").into_bytes();
            assert_eq!(raw[..raw.len() - TAG_BYTES], body[..]);
            let mut mac =
                Signer::new_from_slice("k".repeat(MIN_KEY_BYTES).as_bytes()).expect("key");
            mac.update(&body);
            assert_eq!(
                raw[raw.len() - TAG_BYTES..],
                mac.finalize().into_bytes()[..TAG_BYTES]
            );
        }
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            String::new(),
            "!!!".into(),
            forge("1\nq\ng\n1-0"),
            forge("2\nq\ng\n1-0\n1"),
            forge("1\nq x\ng\n1-0\n1"),
            forge("1\nq:dlq\ng\n1-0\n1"),
            forge("2"),
            forge("2\nq\ng\n1-0"),
            forge("3\nq\ng\n1-0\n1"),
            forge("1\nq\n\n1-0\n1"),
            forge("1\nq\ng\nabc\n1"),
            forge("1\nq\ng\n1-0\n0"),
            forge("1\nq\ng\n1-0\n1\nextra"),
            "A".repeat(MAX_RECEIPT_BYTES + 1),
        ] {
            let lenient = Keys::new(["k".repeat(MIN_KEY_BYTES)], true).expect("key");
            assert!(
                matches!(
                    Receipt::decode(&lenient, &bad),
                    Err(Error::InvalidArgument(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_forged_or_tampered_receipt_is_refused() {
        let k = keys();
        let genuine = Receipt::encode_parts(&k, "q", "q-group", "1-0", 1, None);
        // Another group's delivery, written by hand with a made-up tag.
        let mut forged = b"2\nq\nother-group\n1-0\n1".to_vec();
        forged.extend_from_slice(&[0u8; TAG_BYTES]);
        // The genuine receipt with its attempt bumped, tag kept.
        let mut raw = URL_SAFE_NO_PAD.decode(&genuine).expect("base64url");
        let at = raw.len() - TAG_BYTES - 1;
        raw[at] = b'2';
        // Signed with a key this replica does not hold.
        let stranger = Keys::new(["s".repeat(MIN_KEY_BYTES)], false).expect("key");
        for bad in [
            URL_SAFE_NO_PAD.encode(forged),
            URL_SAFE_NO_PAD.encode(raw),
            Receipt::encode_parts(&stranger, "q", "q-group", "1-0", 1, None),
        ] {
            let e = Receipt::decode(&k, &bad);
            assert!(
                matches!(&e, Err(Error::InvalidArgument(m)) if m.contains("signature")),
                "{e:?}"
            );
        }
        assert!(Receipt::decode(&k, &genuine).is_ok());
    }

    #[test]
    fn unsigned_receipts_only_with_the_transition_flag() {
        let v1 = forge("1\nq\nq-group\n1-0\n1");
        assert!(matches!(
            Receipt::decode(&keys(), &v1),
            Err(Error::InvalidArgument(m)) if m.contains("unsigned")
        ));
        let lenient = Keys::new(["k".repeat(MIN_KEY_BYTES)], true).expect("key");
        assert_eq!(
            Receipt::decode(&lenient, &v1)
                .map(|r| r.group)
                .ok()
                .as_deref(),
            Some("q-group")
        );
    }

    #[test]
    fn rotation_keeps_receipts_signed_with_an_older_key() {
        let (old, new) = ("o".repeat(40), "n".repeat(40));
        let before = Keys::new([&old], false).expect("key");
        let token = Receipt::encode_parts(&before, "q", "g", "5-1", 2, None);
        // A new key goes first; the old one still verifies.
        let after = Keys::new([&new, &old], false).expect("keys");
        assert_eq!(
            Receipt::decode(&after, &token).map(|r| r.attempt).ok(),
            Some(2)
        );
        let newer = Receipt::encode_parts(&after, "q", "g", "5-1", 2, None);
        assert_ne!(newer, token, "the first key signs");
        assert!(Receipt::decode(&before, &newer).is_err());
        // Once the old key is dropped, its receipts are refused.
        let only_new = Keys::new([&new], false).expect("key");
        assert!(Receipt::decode(&only_new, &token).is_err());
    }

    #[test]
    fn the_shared_key_is_no_queue_s_key() {
        assert!(!routing::is_queue_name(SHARED_KEY_NAME));
        let from_path = routing::route(&format!("/{SHARED_KEY_NAME}")).expect("a path");
        assert_ne!(from_path.queue, SHARED_KEY_NAME);
    }

    #[test]
    fn keys_are_bounded() {
        assert!(Keys::new(["short"], false).is_err());
        assert!(Keys::new(["x".repeat(MAX_KEY_BYTES + 1)], false).is_err());
        assert!(Keys::new(Vec::<String>::new(), false).is_err());
        assert!(Keys::new(vec!["x".repeat(32); MAX_KEYS + 1], false).is_err());
        assert!(Keys::new(vec!["x".repeat(32); MAX_KEYS], false).is_ok());
        assert!(!format!("{:?}", keys()).contains("kkkk"));
    }
}

#[cfg(test)]
mod fuzz {
    //! Property tests: no input makes the codec panic, and every receipt it
    //! issues decodes to itself. `PROPTEST_CASES=100000 cargo test fuzz`
    //! runs longer than CI's default.
    use super::*;
    use proptest::prelude::*;

    fn keys() -> Keys {
        Keys::new(["f".repeat(MIN_KEY_BYTES)], true).expect("key")
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_text_never_panics(s in ".{0,300}") {
            let _ = Receipt::decode(&keys(), &s);
        }

        #[test]
        fn decoding_arbitrary_bytes_as_base64_never_panics(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Receipt::decode(&keys(), &URL_SAFE_NO_PAD.encode(&b));
        }

        #[test]
        fn issued_receipts_round_trip(
            queue in "[A-Za-z0-9_]{1,40}",
            group in "[^\\p{Cc}]{1,60}",
            ms in any::<u64>(),
            seq in any::<u64>(),
            attempt in 1u32..,
            ordering_key in proptest::option::of("(.|\n){1,64}"), // ≤ 256 bytes
        ) {
            let r = Receipt { queue, group, id: format!("{ms}-{seq}"), attempt, ordering_key };
            prop_assert_eq!(Receipt::decode(&keys(), &r.encode(&keys())).ok(), Some(r));
        }

        #[test]
        fn flipping_any_bit_of_a_receipt_is_caught(
            group in "[a-z]{1,20}",
            attempt in 1u32..,
            bit in any::<prop::sample::Index>(),
        ) {
            let token = Receipt::encode_parts(&keys(), "q", &group, "1-0", attempt, None);
            let mut raw = URL_SAFE_NO_PAD.decode(&token).expect("base64url");
            let i = bit.index(raw.len() * 8);
            raw[i / 8] ^= 1 << (i % 8);
            prop_assert!(Receipt::decode(&keys(), &URL_SAFE_NO_PAD.encode(&raw)).is_err());
        }
    }
}
