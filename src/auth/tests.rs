//! Unit tests of tokens, grants and rate limits.
use super::*;

fn grant(toml_text: &str) -> Arc<Grant> {
    let set = parse_tokens(toml_text, Path::new("t.toml")).expect("parses");
    set.by_hash.values().next().cloned().expect("one token")
}

const HASH: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

#[test]
fn hashes_like_sha256sum() {
    assert_eq!(hash_token("test"), HASH);
}

#[test]
fn grants_cover_paths_patterns_and_queues() {
    let g = grant(&format!(
        "[[tokens]]\nname = \"orders\"\nhash = \"{HASH}\"\nsend = [\"/order/>\"]\nsubscribe = [\"/order/*/eu\", \"/audit\"]\n"
    ));
    let r = |p: &str| routing::route(p).expect("route");
    let pat = |p: &str| Pattern::parse(p).ok().flatten().expect("pattern");
    assert!(g.check(Action::Send, &r("/order/status/")).is_ok());
    assert!(g.check(Action::Send, &r("/order/a/b")).is_ok());
    assert!(g.check(Action::Send, &r("/order")).is_err());
    assert!(g.check(Action::Send, &r("/payment/x")).is_err());
    assert!(g.check(Action::Subscribe, &r("/order/x/eu")).is_ok());
    assert!(g.check(Action::Subscribe, &r("/order/x/us")).is_err());
    assert!(g.check(Action::Admin, &r("/order/x")).is_err());
    // Patterns: inside the grant or refused whole.
    assert!(g
        .check_pattern(Action::Subscribe, &pat("/order/*/eu"))
        .is_ok());
    assert!(g
        .check_pattern(Action::Subscribe, &pat("/order/>"))
        .is_err());
    assert!(g.check_pattern(Action::Subscribe, &pat("/*/x/eu")).is_err());
    assert!(g.check_pattern(Action::Send, &pat("/order/*/x/>")).is_ok());
    // Queue names (receipts): `*` may span words of one segment.
    assert!(g
        .check_queue(Action::Subscribe, "order_new_item_eu")
        .is_ok());
    assert!(g.check_queue(Action::Subscribe, "audit").is_ok());
    assert!(g.check_queue(Action::Subscribe, "order_eu").is_err());
    assert!(g.check_queue(Action::Subscribe, "payment_x_eu").is_err());
}

#[test]
fn a_star_is_one_segment_by_path_and_by_queue_name() {
    let g = grant(&format!(
        "[[tokens]]\nname = \"t\"\nhash = \"{HASH}\"\nsubscribe = [\"/t/*\"]\n"
    ));
    let r = |p: &str| routing::route(p).expect("route");
    assert!(g.check(Action::Subscribe, &r("/t/x")).is_ok());
    // Once allowed through the queue name `t_x_secret`.
    for deeper in ["/t/x/secret", "/t/x/y/z"] {
        assert!(
            matches!(
                g.check(Action::Subscribe, &r(deeper)),
                Err(Error::PermissionDenied(_))
            ),
            "{deeper}"
        );
    }
    // A queue name is covered only through a path the grant covers:
    // `t_x` is `/t/x`; `t_` would need an empty segment.
    assert!(g.check_queue(Action::Subscribe, "t_x").is_ok());
    assert!(g.check_queue(Action::Subscribe, "t_").is_err());
    assert!(g.check_queue(Action::Subscribe, "t").is_err());
    let deep = grant(&format!(
        "[[tokens]]\nname = \"d\"\nhash = \"{HASH}\"\nsubscribe = [\"/a/*/*/*/*/*/*/b\"]\n"
    ));
    // A long name of empty words costs linear time, not exponential.
    let started = std::time::Instant::now();
    assert!(deep
        .check_queue(Action::Subscribe, &format!("a{}c", "_".repeat(4000)))
        .is_err());
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
}

#[test]
fn bad_files_are_refused_with_the_entry_named() {
    for (text, says) in [
        (
            "[[tokens]]\nname = \"a\"\nhash = \"plain\"\n",
            "hash must be",
        ),
        (
            &format!("[[tokens]]\nname = \"a\"\nhash = \"{HASH}\"\nsend = [\"/a/>/b\"]\n"),
            "last segment",
        ),
        (
            &format!("[[tokens]]\nname = \"a\"\nhash = \"{HASH}\"\nsned = []\n"),
            "unknown field",
        ),
        (
            &format!("[[tokens]]\nname = \"a\"\nhash = \"{HASH}\"\nrate = -1\n"),
            "rate must be",
        ),
    ] {
        let e = parse_tokens(text, Path::new("t.toml"))
            .err()
            .unwrap_or_default();
        assert!(e.contains(says), "{e}");
    }
}

#[test]
fn rate_limit_refuses_past_the_burst() {
    let g = grant(&format!(
        "[[tokens]]\nname = \"slow\"\nhash = \"{HASH}\"\nrate = 0.001\nburst = 2\n"
    ));
    assert!(g.take().is_ok());
    assert!(g.take().is_ok());
    assert!(matches!(g.take(), Err(Error::ResourceExhausted(_))));
}

#[test]
fn burst_is_whole_requests() {
    let g = grant(&format!(
        "[[tokens]]\nname = \"slow\"\nhash = \"{HASH}\"\nrate = 0.001\nburst = 2.9\n"
    ));
    assert!(g.take().is_ok());
    assert!(g.take().is_ok());
    assert!(matches!(g.take(), Err(Error::ResourceExhausted(m)) if m.contains("rate of 0.001")));
}

#[test]
fn rates_governor_cannot_count_are_refused_and_huge_ones_are_capped() {
    for (rate, burst, says) in [
        ("1e-12", "1", "burst / rate"),
        ("0.001", "1e12", "burst / rate"),
        ("inf", "1", "rate must be"),
        ("1", "0.5", "burst must be"),
    ] {
        let text = format!(
            "[[tokens]]\nname = \"a\"\nhash = \"{HASH}\"\nrate = {rate}\nburst = {burst}\n"
        );
        let e = parse_tokens(&text, Path::new("t.toml"))
            .err()
            .unwrap_or_default();
        assert!(e.contains(says), "rate {rate} burst {burst}: {e}");
    }
    // Faster than governor's 1 ns unit, and a burst past u32::MAX: both load.
    let g = grant(&format!(
        "[[tokens]]\nname = \"fast\"\nhash = \"{HASH}\"\nrate = 1e12\n"
    ));
    assert!(g.take().is_ok());
}

#[test]
fn a_queue_quota_is_bounded_and_names_its_token() {
    let q = |n: &str| format!("[[tokens]]\nname = \"t\"\nhash = \"{HASH}\"\nmax_queues = {n}\n");
    let c = grant(&q("3")).creator().expect("a quota");
    assert_eq!((&*c.name, c.max_queues), ("t", 3));
    assert!(grant(&q("0")).creator().is_some(), "0: may create none");
    let e = parse_tokens(&q("10000001"), Path::new("t.toml")).err();
    assert!(e.unwrap_or_default().contains("max_queues must be at most"));
    assert!(Grant::everything().creator().is_none());
}

#[test]
fn authenticate_outcomes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("tokens.toml");
    std::fs::write(
        &f,
        format!("[[tokens]]\nname = \"t\"\nhash = \"{HASH}\"\nsend = [\">\"]\n"),
    )
    .expect("write");
    let auth = Auth::from_file(&f).expect("loads");
    assert!(matches!(
        auth.authenticate(None),
        Err(Error::Unauthenticated(_))
    ));
    assert!(matches!(
        auth.authenticate(Some(b"Basic dGVzdA==")),
        Err(Error::Unauthenticated(_))
    ));
    assert!(matches!(
        auth.authenticate(Some(b"Bearer nope")),
        Err(Error::Unauthenticated(_))
    ));
    let g = auth.authenticate(Some(b"bearer test")).expect("known");
    assert_eq!(g.name, "t");
    assert!(Auth::off().authenticate(None).is_ok());
}
