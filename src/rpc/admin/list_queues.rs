//! ListQueues: a page of the queues in the registry the caller may
//! administer, in name order.

use crate::broker::limits::{DEFAULT_QUEUE_PAGE, MAX_QUEUE_PAGE};
use crate::error::{Error, Result};
use crate::proto;
use crate::queues::Queues;
use crate::rpc::convert;

/// A page token: the last queue name of the page before, marked so that
/// the empty queue name (path "/") is a token too.
const TOKEN_MARK: &str = "q:";

fn after(token: &str) -> Result<Option<&str>> {
    if token.is_empty() {
        return Ok(None);
    }
    match token.strip_prefix(TOKEN_MARK) {
        Some(q) if q.is_empty() || crate::routing::check_queue_name(q).is_ok() => Ok(Some(q)),
        _ => Err(Error::invalid("page_token is not one this server issued")),
    }
}

pub async fn handle(
    queues: &Queues,
    grant: &crate::auth::Grant,
    req: proto::ListQueuesRequest,
) -> Result<proto::ListQueuesResponse> {
    let page = convert::count(
        "page_size",
        req.page_size,
        DEFAULT_QUEUE_PAGE,
        MAX_QUEUE_PAGE,
    )?;
    let after = after(&req.page_token)?;
    let (page, next) = queues.list_queues(grant, page as usize, after).await?;
    Ok(proto::ListQueuesResponse {
        queues: page
            .into_iter()
            .map(|q| proto::QueueSummary {
                queue: q.queue,
                stream: q.stream,
                length: q.length,
                dead_letters: q.dead_letters,
                paths: q.paths,
            })
            .collect(),
        next_page_token: next.map(|q| format!("{TOKEN_MARK}{q}")).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tokens_this_server_issues_are_taken() {
        assert_eq!(after("").ok(), Some(None));
        assert_eq!(after("q:").ok(), Some(Some("")));
        assert_eq!(after("q:order_eu").ok(), Some(Some("order_eu")));
        // A queue addressed by name may hold ':' (LeanMQ's responses:<uuid>).
        assert_eq!(after("q:a:b").ok(), Some(Some("a:b")));
        for bad in ["order_eu", "q:a b", "q:a{b}", "q:a:dlq"] {
            assert!(after(bad).is_err(), "{bad}");
        }
    }
}
