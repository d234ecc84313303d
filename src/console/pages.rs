//! The pages, as maud templates. maud escapes every `(value)` it splices
//! in, so payloads, headers, reasons and names always show as text.

use maud::{html, Markup, DOCTYPE};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// What is escaped in a URL component: all but RFC 3986's unreserved
/// characters (so `order_status` stays readable).
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'_')
    .remove(b'-')
    .remove(b'.')
    .remove(b'~');

use super::assets;
use super::chart;
use super::error::Failure;
use super::rates::Point;
use super::view::{self, DeadLetterView, Preview, QueueDetail, QueueRow};

/// Who is looking, for the layout.
pub struct Ctx {
    /// The signed-in token's name (`None` with auth off).
    pub who: Option<String>,
    /// Auth is off: show the warning banner.
    pub anonymous: bool,
    /// The CSRF token every form of the page carries.
    pub csrf: String,
}

/// `/queues/<name>` with the name percent-encoded.
pub fn queue_url(name: &str) -> String {
    format!("/queues/{}", utf8_percent_encode(name, COMPONENT))
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

fn csrf_field(ctx: &Ctx) -> Markup {
    html! { input type="hidden" name="csrf" value=(ctx.csrf); }
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="referrer" content="no-referrer";
            title { (title) " · leanmq console" }
            link rel="stylesheet" href=(assets::css_url());
            script src=(assets::js_url()) defer {}
        }
    }
}

pub fn layout(ctx: &Ctx, title: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header.top {
                    a.brand href="/queues" { "leanmq" }
                    a href="/queues" { "Queues" }
                    a href="/push" { "Push" }
                    div.who {
                        span #refresh-status.muted {}
                        @if let Some(who) = &ctx.who {
                            span { "Signed in as " strong { (who) } }
                            form method="post" action="/logout" {
                                (csrf_field(ctx))
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                @if ctx.anonymous {
                    div.banner role="alert" {
                        strong { "Auth is off." }
                        " Anyone who can reach this console may requeue, delete and purge. Start leanmqd with "
                        code { "--auth-tokens" } " for a shared deployment."
                    }
                }
                main { (content) }
            }
        }
    }
}

/// How the queues table is sorted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    Name,
    Depth,
    DeadLetters,
    Groups,
    Pending,
    Lag,
    Oldest,
    Scheduled,
    SendRate,
    AckRate,
}

impl Sort {
    pub const ALL: [Sort; 10] = [
        Sort::Name,
        Sort::Depth,
        Sort::DeadLetters,
        Sort::Groups,
        Sort::Pending,
        Sort::Lag,
        Sort::Oldest,
        Sort::Scheduled,
        Sort::SendRate,
        Sort::AckRate,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Sort::Name => "name",
            Sort::Depth => "depth",
            Sort::DeadLetters => "dlq",
            Sort::Groups => "groups",
            Sort::Pending => "pending",
            Sort::Lag => "lag",
            Sort::Oldest => "oldest",
            Sort::Scheduled => "scheduled",
            Sort::SendRate => "send",
            Sort::AckRate => "ack",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Sort::Name => "Queue",
            Sort::Depth => "Depth",
            Sort::DeadLetters => "DLQ",
            Sort::Groups => "Groups",
            Sort::Pending => "Pending",
            Sort::Lag => "Lag",
            Sort::Oldest => "Oldest unacked",
            Sort::Scheduled => "Scheduled",
            Sort::SendRate => "Send/s",
            Sort::AckRate => "Ack/s",
        }
    }

    pub fn parse(s: &str) -> Option<Sort> {
        Sort::ALL.into_iter().find(|k| k.key() == s)
    }
}

/// The queues page's data.
pub struct QueueList {
    pub rows: Vec<QueueRow>,
    pub filter: String,
    pub sort: Sort,
    pub desc: bool,
    /// Queues the caller sees, before the filter.
    pub total: usize,
    /// Rows past the detail limit show only depth and DLQ.
    pub detail_limit: usize,
}

impl QueueList {
    fn url(&self, sort: Sort, desc: bool, fragment: bool) -> String {
        let mut u = format!(
            "/queues?sort={}&dir={}",
            sort.key(),
            if desc { "desc" } else { "asc" }
        );
        if !self.filter.is_empty() {
            u.push_str("&q=");
            u.push_str(&enc(&self.filter));
        }
        if fragment {
            u.push_str("&fragment=1");
        }
        u
    }
}

pub fn queues(ctx: &Ctx, list: &QueueList) -> Markup {
    layout(
        ctx,
        "Queues",
        html! {
            h1 { "Queues" }
            form.toolbar method="get" action="/queues" {
                input type="search" name="q" value=(list.filter) placeholder="Filter by queue or path"
                    aria-label="Filter queues" data-filter-for="queues-table" maxlength="200";
                input type="hidden" name="sort" value=(list.sort.key());
                input type="hidden" name="dir" value=(if list.desc { "desc" } else { "asc" });
                button type="submit" { "Filter" }
                span.muted { "Refreshes every 5 s. Rates: this leanmqd, last minute." }
            }
            div #queues-table data-refresh=(list.url(list.sort, list.desc, true)) data-every="5" {
                (queues_table(list))
            }
        },
    )
}

fn opt_i64(v: Option<i64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "?".into())
}

pub fn queues_table(list: &QueueList) -> Markup {
    html! {
        @if list.rows.is_empty() {
            p.muted {
                @if list.total == 0 {
                    "No queues yet (or none your token may administer). Send a message to a path and it appears here."
                } @else {
                    "No queue matches the filter."
                }
            }
        } @else {
            table #queues {
                thead { tr {
                    @for s in Sort::ALL {
                        @let active = s == list.sort;
                        @let desc = if active { !list.desc } else { s != Sort::Name };
                        th.num[s != Sort::Name] aria-sort=(if active { if list.desc { "descending" } else { "ascending" } } else { "none" }) {
                            a href=(list.url(s, desc, false)) {
                                (s.label())
                                @if active { (if list.desc { " ↓" } else { " ↑" }) }
                            }
                        }
                    }
                } }
                tbody {
                    @for r in &list.rows {
                        tr data-queue=(r.name) {
                            td {
                                a href=(queue_url(&r.name)) { (r.name) }
                                @if !r.paths.is_empty() {
                                    br; span.muted { (r.paths.join(", ")) }
                                }
                            }
                            td.num { (r.depth) }
                            td.num {
                                @if r.dead_letters > 0 {
                                    a href={ (queue_url(&r.name)) "/dead-letters" } { (r.dead_letters) }
                                } @else { "0" }
                            }
                            @if let Some(d) = &r.detail {
                                td.num { (d.groups) }
                                td.num { (d.pending) }
                                td.num { (opt_i64(d.lag)) }
                                td.num { (d.oldest_unacked.map(view::age).unwrap_or_else(|| "–".into())) }
                                td.num { (d.scheduled) }
                            } @else {
                                td.num.muted colspan="5" { "open the queue for details" }
                            }
                            td.num { (view::rate(r.send_rate)) }
                            td.num { (view::rate(r.ack_rate)) }
                        }
                    }
                }
            }
            @if list.rows.len() > list.detail_limit {
                p.muted { "Details are fetched for the first " (list.detail_limit) " queues; filter to narrow." }
            }
        }
    }
}

/// What an action just did, shown once after its redirect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    Requeued { n: u64, missing: u64 },
    Deleted { n: u64 },
    PurgedDeadLetters { n: u64 },
    PurgedQueue { n: u64 },
}

impl Done {
    /// The query string that carries it across the redirect (numbers only,
    /// so no text can be injected through a link).
    pub fn query(self) -> String {
        match self {
            Done::Requeued { n, missing } => format!("done=requeued&n={n}&missing={missing}"),
            Done::Deleted { n } => format!("done=deleted&n={n}"),
            Done::PurgedDeadLetters { n } => format!("done=purged-dlq&n={n}"),
            Done::PurgedQueue { n } => format!("done=purged-queue&n={n}"),
        }
    }

    pub fn parse(done: Option<&str>, n: Option<u64>, missing: Option<u64>) -> Option<Done> {
        let n = n.unwrap_or(0);
        Some(match done? {
            "requeued" => Done::Requeued {
                n,
                missing: missing.unwrap_or(0),
            },
            "deleted" => Done::Deleted { n },
            "purged-dlq" => Done::PurgedDeadLetters { n },
            "purged-queue" => Done::PurgedQueue { n },
            _ => return None,
        })
    }
}

fn flash(done: Option<Done>) -> Markup {
    let Some(done) = done else {
        return html! {};
    };
    let text = match done {
        Done::Requeued { n, missing: 0 } => format!("Requeued {n} dead letter(s)."),
        Done::Requeued { n, missing } => format!(
            "Requeued {n} dead letter(s); {missing} were no longer in the DLQ (requeued or deleted meanwhile)."
        ),
        Done::Deleted { n } => format!("Deleted {n} dead letter(s)."),
        Done::PurgedDeadLetters { n } => format!("Purged {n} dead letter(s)."),
        Done::PurgedQueue { n } => format!("Purged {n} message(s) from the queue."),
    };
    html! { div.flash role="status" { (text) } }
}

pub fn queue(
    ctx: &Ctx,
    q: &QueueDetail,
    points: &[Point],
    rates: (f64, f64),
    letters: &[DeadLetterView],
    done: Option<Done>,
) -> Markup {
    let url = queue_url(&q.name);
    layout(
        ctx,
        &q.name,
        html! {
            div.crumbs { a href="/queues" { "Queues" } " / " }
            h1 { (q.name) " " span.muted { code { (q.stream) } } }
            (flash(done))
            div #queue-live data-refresh={ (url) "?fragment=1" } data-every="5" {
                (queue_live(q, points, rates))
            }
            h2 {
                "Dead letters (" (q.dead_letters) ") "
                a href={ (url) "/dead-letters" } { "all, with actions →" }
            }
            @if letters.is_empty() {
                p.muted { "None." }
            } @else {
                table #dlq-preview {
                    thead { tr { th { "Id" } th { "Last failure" } th.num { "Attempts" } th { "Failed at" } } }
                    tbody {
                        @for d in letters {
                            tr {
                                td { a href={ (url) "/dead-letters#dl-" (d.id) } { code { (d.id) } } }
                                td { (d.last_reason) }
                                td.num { (d.attempts) }
                                td { (d.last_failed_at.map(view::when).unwrap_or_default()) }
                            }
                        }
                    }
                }
            }
            section.danger-zone {
                h2 { "Purge the queue" }
                p.muted { "Deletes every message of this queue, delivered or not, and its schedules. Its groups remain. Type the queue name to confirm." }
                form method="post" action={ (url) "/purge" } {
                    (csrf_field(ctx))
                    input type="text" name="confirm" placeholder=(q.name) aria-label="Queue name, to confirm" autocomplete="off" maxlength="512";
                    button.danger type="submit" { "Purge queue" }
                }
            }
        },
    )
}

/// The part of the queue page that refreshes in place.
pub fn queue_live(q: &QueueDetail, points: &[Point], rates: (f64, f64)) -> Markup {
    let t = q.totals();
    html! {
        div.cards {
            div.card { div.v { (q.depth) } div.k { "depth (entries)" } }
            div.card { div.v { (q.dead_letters) } div.k { "dead letters" } }
            div.card { div.v { (t.pending) } div.k { "pending" } }
            div.card { div.v { (opt_i64(t.lag)) } div.k { "lag" } }
            div.card { div.v { (t.oldest_unacked.map(view::age).unwrap_or_else(|| "–".into())) } div.k { "oldest unacked" } }
            div.card { div.v { (q.scheduled) } div.k { "scheduled (delayed " (q.delayed) ")" } }
            div.card { div.v { (view::rate(rates.0)) } div.k { "sent/s (last min)" } }
            div.card { div.v { (view::rate(rates.1)) } div.k { "acked/s (last min)" } }
            div.card { div.v { (q.expired) } div.k { "expired (all time)" } }
            div.card { div.v { (q.dropped) } div.k { "dropped by --max-len" } }
        }
        h2 { "Throughput, last 15 minutes" }
        (chart::throughput(points))
        h2 { "Groups" }
        @if q.groups.is_empty() {
            p.muted { "No consumer group yet: nothing has subscribed to this queue." }
        } @else {
            table #groups {
                thead { tr {
                    th { "Group" } th.num { "Consumers" } th.num { "Pending" } th.num { "Retrying" }
                    th.num { "Lag" } th.num { "Oldest unacked" } th { "Last delivered" }
                } }
                tbody {
                    @for g in &q.groups {
                        tr {
                            td { (g.name) }
                            td.num { (g.consumers) }
                            td.num { (g.pending) }
                            td.num { (g.retrying) }
                            td.num { (opt_i64(g.lag)) }
                            td.num { (g.oldest_unacked.map(view::age).unwrap_or_else(|| "–".into())) }
                            td { code { (g.last_delivered_id) } }
                        }
                    }
                }
            }
        }
        @if let Some(at) = q.created_at {
            p.muted { "Created " (view::when(at)) "." }
        }
    }
}

/// The dead letters page's data.
pub struct LetterPage<'a> {
    pub queue: &'a str,
    pub total: i64,
    pub letters: &'a [DeadLetterView],
    pub size: u32,
    /// The token this page was fetched with (empty: the first page).
    pub token: &'a str,
    pub next: &'a str,
    pub done: Option<Done>,
}

fn payload(p: &Preview) -> Markup {
    let (kind, text, truncated) = match p {
        Preview::Empty => return html! { p.muted { "Empty payload." } },
        Preview::Json { text, truncated } => ("JSON", text, *truncated),
        Preview::Text { text, truncated } => ("text", text, *truncated),
        Preview::Hex { dump, truncated } => ("binary, hex", dump, *truncated),
    };
    html! {
        div.muted { "Payload (" (kind) ")" @if truncated { ", truncated" } }
        pre.payload { (text) }
    }
}

pub fn dead_letters(ctx: &Ctx, page: &LetterPage) -> Markup {
    let url = queue_url(page.queue);
    let here = format!("{url}/dead-letters");
    layout(
        ctx,
        &format!("Dead letters of {}", page.queue),
        html! {
            div.crumbs { a href="/queues" { "Queues" } " / " a href=(url) { (page.queue) } " / " }
            h1 { "Dead letters of " (page.queue) " " span.muted { "(" (page.total) ")" } }
            (flash(page.done))
            @if page.letters.is_empty() {
                p.muted { @if page.token.is_empty() { "The DLQ is empty." } @else { "No more dead letters." } }
            } @else {
                form #letters method="post" action={ (here) "/requeue" } {
                    (csrf_field(ctx))
                    div.actions {
                        label { input type="checkbox" data-select-all; " Select all on this page" }
                        button.primary type="submit" formaction={ (here) "/requeue" } { "Requeue selected" }
                        button.danger type="submit" formaction={ (here) "/delete" }
                            data-confirm="Delete the selected dead letters? This cannot be undone." { "Delete selected" }
                    }
                    @for d in page.letters {
                        (letter(d))
                    }
                }
            }
            div.pager {
                @if !page.token.is_empty() { a href={ (here) "?size=" (page.size) } { "← First page" } }
                @if !page.next.is_empty() { a href={ (here) "?size=" (page.size) "&page=" (enc(page.next)) } { "Next page →" } }
            }
            @if page.total > 0 {
                section.danger-zone {
                    h2 { "All dead letters" }
                    form method="post" action={ (here) "/requeue" } {
                        (csrf_field(ctx))
                        input type="hidden" name="all" value="1";
                        button type="submit" data-confirm="Requeue every dead letter of this queue?" { "Requeue all" }
                    }
                    form method="post" action={ (here) "/purge" } {
                        (csrf_field(ctx))
                        input type="text" name="confirm" placeholder=(page.queue) aria-label="Queue name, to confirm" autocomplete="off" maxlength="512";
                        button.danger type="submit" { "Purge dead letters" }
                        span.muted { "Type the queue name to confirm; this deletes every dead letter." }
                    }
                }
            }
        },
    )
}

fn letter(d: &DeadLetterView) -> Markup {
    html! {
        section.dl id={ "dl-" (d.id) } data-id=(d.id) {
            div.head {
                input type="checkbox" name="id" value=(d.id) aria-label={ "Select " (d.id) };
                code { (d.id) }
                span.reason { (d.last_reason) }
                span.muted { (d.attempts) " attempt(s)" }
                div.right {
                    button type="submit" name="one" value=(d.id) { "Requeue" }
                }
            }
            div.body {
                div { (payload(&d.payload)) }
                div {
                    dl.facts {
                        dt { "Original id" } dd { @if d.original_id.is_empty() { span.muted { "— (dead-lettered by LeanMQ)" } } @else { code { (d.original_id) } } }
                        dt { "Path" } dd { (d.path) }
                        dt { "Content type" } dd { (d.content_type) }
                        dt { "Size" } dd { (d.size) " bytes" }
                        dt { "First failed" } dd { (d.first_failed_at.map(view::when).unwrap_or_default()) }
                        dt { "Last failed" } dd { (d.last_failed_at.map(view::when).unwrap_or_default()) }
                    }
                    @if !d.headers.is_empty() {
                        table.headers {
                            thead { tr { th { "Header" } th { "Value" } } }
                            tbody { @for (k, v) in &d.headers { tr { td { code { (k) } } td { (v) } } } }
                        }
                    }
                    h3.muted { "Failure history" }
                    table.failures {
                        thead { tr { th { "At" } th { "Group" } th.num { "Attempts" } th { "Reason" } } }
                        tbody {
                            @for f in &d.failures {
                                tr {
                                    td { (f.at.map(view::when).unwrap_or_default()) }
                                    td { (f.group) }
                                    td.num { (f.attempts) }
                                    td { (f.reason) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub fn login(csrf: &str, problem: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Sign in"))
            body {
                div.login {
                    h1 { "leanmq console" }
                    p.muted { "Sign in with an API token. What you see and may do is its admin grant." }
                    @if let Some(p) = problem { div.flash.bad role="alert" { (p) } }
                    form method="post" action="/login" {
                        input type="hidden" name="csrf" value=(csrf);
                        input type="password" name="token" placeholder="Token" aria-label="Token" autocomplete="current-password" required maxlength="4096";
                        button.primary type="submit" { "Sign in" }
                    }
                }
            }
        }
    }
}

pub fn error(f: &Failure) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(f.title))
            body {
                header.top { a.brand href="/queues" { "leanmq" } a href="/queues" { "Queues" } }
                main {
                    h1 { (f.title) }
                    p #problem { (f.detail) }
                    p.muted { "HTTP " (f.status.as_u16()) " · " a href="/queues" { "back to the queues" } }
                }
            }
        }
    }
}
