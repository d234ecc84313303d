//! The push subscriptions page (docs/push.md): each subscription's path,
//! endpoint, state (and why it is paused) and counters. Read-only; the CLI
//! and the Admin RPCs change them.

use maud::{html, Markup};

use super::pages::{layout, Ctx};

/// One subscription as the page shows it.
#[derive(Debug, Clone)]
pub struct PushRow {
    pub name: String,
    pub path: String,
    pub endpoint: String,
    pub state: &'static str,
    pub reason: String,
    pub delivered: i64,
    pub failed: i64,
    pub dead_lettered: i64,
}

pub fn page(ctx: &Ctx, rows: &[PushRow]) -> Markup {
    layout(
        ctx,
        "Push subscriptions",
        html! {
            h1 { "Push subscriptions" }
            @if rows.is_empty() {
                p.muted { "No push subscriptions (or none your token may administer). Create one with " code { "leanmq push create" } "." }
            } @else {
                table #push {
                    thead { tr {
                        th { "Name" } th { "Path" } th { "Endpoint" } th { "State" }
                        th.num { "Delivered" } th.num { "Failed" } th.num { "Dead-lettered" }
                    } }
                    tbody {
                        @for r in rows {
                            tr data-push=(r.name) {
                                td { (r.name) }
                                td { code { (r.path) } }
                                td { (r.endpoint) }
                                td {
                                    (r.state)
                                    @if !r.reason.is_empty() { br; span.muted { (r.reason) } }
                                }
                                td.num { (r.delivered) }
                                td.num { (r.failed) }
                                td.num { (r.dead_lettered) }
                            }
                        }
                    }
                }
            }
        },
    )
}
