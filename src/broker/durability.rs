//! `--wait-replicas-for`: how many replicas must acknowledge a write, per
//! path pattern or per key prefix. The most specific rule wins (an exact
//! path, then a pattern with more literal segments, `*` before `>`, then a
//! `prefix:NAME` rule), else the server-wide `--wait-replicas`.

use crate::routing::{self, Pattern};

/// Most `--wait-replicas-for` rules.
pub const MAX_RULES: usize = 256;
/// Most replicas one rule (or `--wait-replicas`) may ask for.
pub const MAX_REPLICAS: u32 = 64;

/// What a rule covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// One normalized path.
    Path(String),
    /// A Subscribe/grant pattern (`/orders/>`, `/t/*`).
    Pattern(Pattern),
    /// Every queue under a served key prefix.
    Prefix(String),
}

/// One `PATTERN=N` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitRule {
    pub scope: Scope,
    pub replicas: u32,
}

impl WaitRule {
    /// Parse `PATTERN=N` or `prefix:NAME=N`.
    pub fn parse(s: &str) -> Result<WaitRule, String> {
        let bad = |why: &str| format!("--wait-replicas-for {s:?}: {why}");
        let (what, n) = s
            .rsplit_once('=')
            .ok_or_else(|| bad("expected PATTERN=N or prefix:NAME=N"))?;
        let replicas: u32 = n
            .trim()
            .parse()
            .map_err(|_| bad("N must be a whole number"))?;
        if replicas > MAX_REPLICAS {
            return Err(bad(&format!("N must be at most {MAX_REPLICAS}")));
        }
        let scope = if let Some(name) = what.strip_prefix("prefix:") {
            if name.is_empty() {
                return Err(bad("the prefix is empty"));
            }
            Scope::Prefix(name.to_string())
        } else {
            match Pattern::parse(what).map_err(|e| bad(&e.to_string()))? {
                Some(p) => Scope::Pattern(p),
                None => Scope::Path(routing::route(what).map_err(|e| bad(&e.to_string()))?.path),
            }
        };
        Ok(WaitRule { scope, replicas })
    }

    /// How specifically this rule covers `path` under `prefix`, if at all.
    fn rank(&self, prefix: &str, path: &str) -> Option<(u8, usize, usize)> {
        match &self.scope {
            Scope::Path(p) => (p == path).then_some((3, 0, 0)),
            Scope::Pattern(p) => p.matches(path).then(|| {
                let segs: Vec<&str> = p.text.trim_start_matches('/').split('/').collect();
                let literal = segs.iter().filter(|s| **s != "*" && **s != ">").count();
                let open = usize::from(segs.last() != Some(&">"));
                (2, literal, open)
            }),
            Scope::Prefix(name) => (name == prefix).then_some((1, 0, 0)),
        }
    }
}

/// The replicas a write to `path` (normalized; empty for a queue named
/// without a path) under `prefix` must reach.
pub fn replicas_for(rules: &[WaitRule], default: u32, prefix: &str, path: &str) -> u32 {
    rules
        .iter()
        .filter_map(|r| r.rank(prefix, path).map(|k| (k, r.replicas)))
        .max_by_key(|(k, _)| *k)
        .map_or(default, |(_, n)| n)
}

/// A move between a queue's streams names no path: it waits for the most
/// any rule that can apply to this prefix asks (never less than a Send to
/// one of its paths would).
pub fn replicas_for_moves(rules: &[WaitRule], default: u32, prefix: &str) -> u32 {
    let base = rules
        .iter()
        .find(|r| r.scope == Scope::Prefix(prefix.to_string()))
        .map_or(default, |r| r.replicas);
    rules
        .iter()
        .filter(|r| !matches!(r.scope, Scope::Prefix(_)))
        .map(|r| r.replicas)
        .fold(base, u32::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(s: &[&str]) -> Vec<WaitRule> {
        s.iter()
            .map(|r| WaitRule::parse(r).expect("rule"))
            .collect()
    }

    #[test]
    fn the_most_specific_rule_wins() {
        let r = rules(&[
            "/orders/>=2",
            "/orders/eu=3",
            "/orders/*=1",
            "prefix:webhook:=4",
        ]);
        assert_eq!(replicas_for(&r, 0, "webhook:", "/orders/eu"), 3);
        assert_eq!(replicas_for(&r, 0, "webhook:", "/orders/us"), 1);
        assert_eq!(replicas_for(&r, 0, "webhook:", "/orders/us/x"), 2);
        assert_eq!(replicas_for(&r, 0, "webhook:", "/other"), 4);
        assert_eq!(replicas_for(&r, 0, "other:", "/other"), 0);
        assert_eq!(replicas_for_moves(&r, 0, "other:"), 3);
    }

    #[test]
    fn bad_rules_are_refused() {
        for bad in ["/a", "/a=x", "/a>=1", "prefix:=1", "/a=65", "/a/>/b=1"] {
            assert!(WaitRule::parse(bad).is_err(), "{bad}");
        }
    }
}
