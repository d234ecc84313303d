//! The push-subscription Admin RPCs under fuzz: well-formed and hostile
//! subscriptions (names, paths, endpoints, secrets, durations, counts,
//! headers, states), created, read, listed, updated and deleted at random
//! among a small set of names, so that they meet each other's state.
//! Endpoints are mostly ones the SSRF rules refuse, and never one that
//! answers: nothing here depends on the network.

use super::*;

/// Names drawn from a small set, so that creates collide and deletes hit.
fn pick_name(rng: &mut StdRng, clean: bool) -> String {
    if clean || rng.random_bool(0.5) {
        format!("fz{}", rng.random_range(0..6))
    } else {
        rand_text(rng, 0..80)
    }
}

fn pick_endpoint(rng: &mut StdRng, clean: bool) -> String {
    let fixed = [
        "http://127.0.0.1:9/hook",
        "https://10.0.0.1/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/x",
        "https://192.0.2.1/hook",
        "ftp://example.com/",
        "https://user:pw@192.0.2.1/",
        "",
    ];
    if clean || rng.random_bool(0.7) {
        fixed.choose(rng).copied().unwrap_or_default().to_string()
    } else {
        rand_text(rng, 0..300)
    }
}

fn pick_secret(rng: &mut StdRng, clean: bool) -> String {
    if clean {
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()
    } else if rng.random_bool(0.5) {
        format!("whsec_{}", rand_text(rng, 0..120))
    } else {
        rand_text(rng, 0..80)
    }
}

fn pick_sub(rng: &mut StdRng, clean: bool) -> proto::PushSubscription {
    proto::PushSubscription {
        name: pick_name(rng, clean),
        path: pick_path(rng, clean),
        group: if rng.random_bool(0.7) {
            String::new()
        } else {
            pick_group(rng, clean)
        },
        start: pick_start(rng, clean),
        endpoint: pick_endpoint(rng, clean),
        secrets: (0..rng.random_range(0..4))
            .map(|_| pick_secret(rng, clean))
            .collect(),
        timeout: pick_dur(rng, clean),
        max_in_flight: pick_count(rng, clean),
        max_attempts: pick_count(rng, clean),
        retry_schedule: (0..rng.random_range(0..5))
            .filter_map(|_| pick_dur(rng, clean))
            .collect(),
        max_backoff: pick_dur(rng, clean),
        headers: (0..rng.random_range(0..4))
            .map(|_| (rand_text(rng, 0..20), rand_text(rng, 0..40)))
            .collect(),
        state: rng.random_range(-1..5),
        state_reason: rand_text(rng, 0..40),
        ..Default::default()
    }
}

pub(super) async fn push(ctx: &Ctx, rng: &mut StdRng, clean: bool, a: &mut AdminClient<Channel>) {
    let t = &ctx.tally;
    let prefix = if rng.random_bool(0.8) {
        String::new()
    } else {
        pick_prefix(rng, clean)
    };
    match rng.random_range(0..5) {
        0 => {
            let r = timed(
                a.create_push_subscription(proto::CreatePushSubscriptionRequest {
                    subscription: rng.random_bool(0.95).then(|| pick_sub(rng, clean)),
                    prefix,
                }),
            )
            .await;
            t.record("CreatePushSubscription", code_of(&r), false);
        }
        1 => {
            let r = timed(a.get_push_subscription(proto::GetPushSubscriptionRequest {
                name: pick_name(rng, clean),
                prefix,
            }))
            .await;
            t.record("GetPushSubscription", code_of(&r), false);
        }
        2 => {
            let r =
                timed(a.list_push_subscriptions(proto::ListPushSubscriptionsRequest { prefix }))
                    .await;
            t.record("ListPushSubscriptions", code_of(&r), false);
        }
        3 => {
            let r = timed(
                a.update_push_subscription(proto::UpdatePushSubscriptionRequest {
                    subscription: rng.random_bool(0.95).then(|| pick_sub(rng, clean)),
                    prefix,
                    clear_headers: rng.random_bool(0.2),
                }),
            )
            .await;
            t.record("UpdatePushSubscription", code_of(&r), false);
        }
        _ => {
            let r = timed(
                a.delete_push_subscription(proto::DeletePushSubscriptionRequest {
                    name: pick_name(rng, clean),
                    prefix,
                }),
            )
            .await;
            t.record("DeletePushSubscription", code_of(&r), false);
        }
    }
}
