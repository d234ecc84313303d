//! Property tests: a grant matches exactly what the Subscribe pattern
//! matcher (`routing::Pattern::matches`) matches, over random paths and
//! patterns; a grant that covers a requested pattern covers every path that
//! pattern matches; and a grant covers a queue name exactly when it covers a
//! path of that queue. `PROPTEST_CASES=100000 cargo test auth::props` runs
//! longer than CI's default.

use proptest::prelude::*;

use super::GrantPattern;
use crate::routing::{self, Pattern};

/// Segments from a small alphabet, so that random grants and paths often
/// meet; `.`, `-` and `_` all become `_` in queue names.
fn literal() -> impl Strategy<Value = String> {
    "[ab._-]{1,3}"
}

/// A grant or Subscribe pattern: literals and `*`, maybe a final `>`.
fn pattern() -> impl Strategy<Value = String> {
    let seg = prop_oneof![3 => literal(), 1 => Just("*".to_string())];
    (proptest::collection::vec(seg, 1..5), any::<bool>()).prop_map(|(mut segs, rest)| {
        if rest {
            segs.push(">".into());
        }
        format!("/{}", segs.join("/"))
    })
}

/// A path to send to: literal segments only, some of them empty.
fn path() -> impl Strategy<Value = String> {
    let seg = prop_oneof![8 => literal(), 1 => Just(String::new())];
    proptest::collection::vec(seg, 1..7).prop_map(|segs| format!("/{}", segs.join("/")))
}

/// What a Subscribe of `pattern` would match: the pattern matcher, or
/// the one path when `pattern` holds no wildcard.
fn subscribe_matches(pattern: &str, path: &str) -> bool {
    match Pattern::parse(pattern) {
        Ok(Some(p)) => p.matches(path),
        _ => routing::normalize_path(pattern) == path,
    }
}

fn segments(path: &str) -> Vec<&str> {
    path.trim_start_matches('/').split('/').collect()
}

/// `pattern` with its wildcards filled from `fill`: `*` takes one
/// segment, `>` one to three.
fn instance(pattern: &str, fill: &[String]) -> String {
    let mut fill = fill.iter().cycle();
    let mut next = || fill.next().cloned().unwrap_or_else(|| "a".into());
    let segs: Vec<String> = segments(pattern)
        .into_iter()
        .flat_map(|s| match s {
            "*" => vec![next()],
            ">" => {
                let n = next().len();
                (0..n).map(|_| next()).collect()
            }
            lit => vec![lit.to_string()],
        })
        .collect();
    format!("/{}", segs.join("/"))
}

proptest! {
    #[test]
    fn a_grant_matches_a_path_exactly_as_a_subscription_does(g in pattern(), p in path()) {
        let p = routing::normalize_path(&p);
        let grant = GrantPattern::parse(&g).expect("a valid grant");
        prop_assert_eq!(grant.covers(&segments(&p)), subscribe_matches(&g, &p), "grant {} path {}", g, p);
    }

    #[test]
    fn a_covered_pattern_matches_only_covered_paths(
        g in pattern(),
        requested in pattern(),
        fill in proptest::collection::vec(literal(), 1..8),
    ) {
        let grant = GrantPattern::parse(&g).expect("a valid grant");
        if grant.covers(&segments(&requested)) {
            let p = instance(&requested, &fill);
            prop_assert!(subscribe_matches(&requested, &p), "instance {} of {}", p, requested);
            prop_assert!(subscribe_matches(&g, &p), "grant {} covers {} but not its path {}", g, requested, p);
        }
    }

    #[test]
    fn a_queue_name_is_covered_only_through_a_covered_path(g in pattern(), p in path()) {
        let grant = GrantPattern::parse(&g).expect("a valid grant");
        let Ok(route) = routing::route(&p) else { return Ok(()) };
        if let Some(witness) = grant.queue_witness(&route.queue) {
            prop_assert!(subscribe_matches(&g, &witness), "grant {} witness {}", g, witness);
            let via = routing::route(&witness).map(|r| r.queue).ok();
            prop_assert_eq!(via.as_deref(), Some(route.queue.as_str()), "witness {}", witness);
        }
    }

    #[test]
    fn every_path_a_grant_covers_has_its_queue_covered(g in pattern(), p in path()) {
        let p = routing::normalize_path(&p);
        let grant = GrantPattern::parse(&g).expect("a valid grant");
        let nonempty = segments(&p).iter().all(|s| !s.is_empty());
        if nonempty && subscribe_matches(&g, &p) {
            let queue = routing::route(&p).expect("a path").queue;
            prop_assert!(grant.covers_queue(&queue), "grant {} path {} queue {}", g, p, queue);
        }
    }
}
