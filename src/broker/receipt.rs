//! Receipts: self-contained tokens naming one delivery, so that any leanmqd
//! replica can ack, nack or extend it with no shared memory.
//!
//! A receipt is base64url (no padding) of `1\n{queue}\n{group}\n{entry id}\n{attempt}`.
//! The pair (entry id, attempt) names one delivery: Redis counts deliveries
//! per pending entry, so a receipt from before a redelivery no longer matches
//! the entry's count (or holder) and is recognized as stale.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use std::io::Write as _;

use crate::error::{Error, Result};
use crate::routing;

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
}

/// Longest receipt accepted, in bytes (a bound on decoding work).
const MAX_RECEIPT_BYTES: usize = 8 * 1024;

impl Receipt {
    pub fn encode(&self) -> String {
        Self::encode_parts(&self.queue, &self.group, &self.id, self.attempt)
    }

    /// [`Receipt::encode`] from borrowed parts: every delivery makes one, so
    /// it builds no `Receipt` and no intermediate `String`.
    pub fn encode_parts(queue: &str, group: &str, id: &str, attempt: u32) -> String {
        let mut raw = Vec::with_capacity(queue.len() + group.len() + id.len() + 16);
        for part in [
            b"1".as_slice(),
            queue.as_bytes(),
            group.as_bytes(),
            id.as_bytes(),
        ] {
            raw.extend_from_slice(part);
            raw.push(b'\n');
        }
        // Writing to a Vec cannot fail.
        let _ = write!(raw, "{attempt}");
        URL_SAFE_NO_PAD.encode(raw)
    }

    pub fn decode(token: &str) -> Result<Receipt> {
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
        let text = String::from_utf8(raw).map_err(|_| bad("not UTF-8"))?;
        let mut parts = text.split('\n');
        let (Some(version), Some(queue), Some(group), Some(id), Some(attempt), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad("wrong number of fields"));
        };
        if version != "1" {
            return Err(bad("unknown version"));
        }
        if !routing::is_queue_name(queue) {
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
        })
    }
}

/// A Redis stream entry id: `<u64>-<u64>`.
pub fn is_entry_id(id: &str) -> bool {
    match id.split_once('-') {
        Some((ms, seq)) => ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let r = Receipt {
            queue: "order_status".into(),
            group: "billing:v2".into(),
            id: "1732800000000-7".into(),
            attempt: 3,
        };
        assert_eq!(Receipt::decode(&r.encode()).ok(), Some(r));
    }

    #[test]
    fn encodes_the_documented_layout() {
        for attempt in [1, 9, 10, 4_294_967_295] {
            let token = Receipt::encode_parts("q", "q-group", "1-0", attempt);
            let raw = URL_SAFE_NO_PAD.decode(token).expect("base64url");
            assert_eq!(raw, format!("1\nq\nq-group\n1-0\n{attempt}").into_bytes());
        }
    }

    #[test]
    fn rejects_garbage() {
        let forge = |s: &str| URL_SAFE_NO_PAD.encode(s);
        for bad in [
            String::new(),
            "!!!".into(),
            forge("1\nq\ng\n1-0"),
            forge("2\nq\ng\n1-0\n1"),
            forge("1\nq.x\ng\n1-0\n1"),
            forge("1\nq\n\n1-0\n1"),
            forge("1\nq\ng\nabc\n1"),
            forge("1\nq\ng\n1-0\n0"),
            forge("1\nq\ng\n1-0\n1\nextra"),
            "A".repeat(MAX_RECEIPT_BYTES + 1),
        ] {
            assert!(
                matches!(Receipt::decode(&bad), Err(Error::InvalidArgument(_))),
                "{bad}"
            );
        }
    }
}

#[cfg(test)]
mod fuzz {
    //! Property tests: no input makes the codec panic, and every receipt it
    //! issues decodes to itself. `PROPTEST_CASES=100000 cargo test fuzz`
    //! runs longer than CI's default.
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn decoding_arbitrary_text_never_panics(s in ".{0,300}") {
            let _ = Receipt::decode(&s);
        }

        #[test]
        fn decoding_arbitrary_bytes_as_base64_never_panics(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Receipt::decode(&URL_SAFE_NO_PAD.encode(&b));
        }

        #[test]
        fn issued_receipts_round_trip(
            queue in "[A-Za-z0-9_]{1,40}",
            group in "[^\\p{Cc}]{1,60}",
            ms in any::<u64>(),
            seq in any::<u64>(),
            attempt in 1u32..,
        ) {
            let r = Receipt { queue, group, id: format!("{ms}-{seq}"), attempt };
            prop_assert_eq!(Receipt::decode(&r.encode()).ok(), Some(r));
        }
    }
}
