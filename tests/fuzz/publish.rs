//! The Publish stream under fuzz: a stream of fuzzed messages (some with
//! no message at all, repeated and huge sequences), answered one by one.
//! Every per-message code must be one the guide documents, every sequence
//! sent must be answered exactly once, and the stream must end by itself.

use super::*;

pub(super) async fn publish(
    ctx: &Ctx,
    rng: &mut StdRng,
    clean: bool,
    b: &mut proto::broker_client::BrokerClient<Channel>,
) {
    let n = *[0usize, 1, 7, 60].choose(rng).unwrap_or(&1);
    let reqs: Vec<proto::PublishRequest> = (0..n)
        .map(|i| proto::PublishRequest {
            sequence: if rng.random_bool(0.9) {
                i as u64
            } else {
                rng.random()
            },
            message: rng.random_bool(0.95).then(|| pick_send(rng, clean)),
        })
        .collect();
    let sent: BTreeMap<u64, usize> = reqs.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.sequence).or_default() += 1;
        m
    });
    let r = timed(b.publish(futures::stream::iter(reqs))).await;
    let mut stream = match r {
        Ok(s) => s,
        Err(e) => return ctx.tally.record("Publish", Err(e), false),
    };
    let mut answered: BTreeMap<u64, usize> = BTreeMap::new();
    let end = loop {
        match tokio::time::timeout(CALL_LIMIT, stream.message()).await {
            Err(_) => break Err((Code::DeadlineExceeded, "hung: no answer in 15 s".into())),
            Ok(Err(s)) => break Err((s.code(), s.message().to_string())),
            Ok(Ok(None)) => break Ok(Code::Ok),
            Ok(Ok(Some(a))) => {
                *answered.entry(a.sequence).or_default() += 1;
                let code = Code::from_i32(a.code);
                ctx.tally.record(
                    "Publish message",
                    if code == Code::Ok {
                        Ok(code)
                    } else {
                        Err((code, a.error))
                    },
                    false,
                );
            }
        }
    };
    let whole = end.is_ok();
    ctx.tally.record("Publish", end, false);
    if whole && answered != sent {
        if let Ok(mut broken) = ctx.tally.broken.lock() {
            broken.push(format!("Publish: sent {sent:?}, answered {answered:?}"));
        }
    }
}
