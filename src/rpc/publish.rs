//! Publish: a stream of messages, each answered on its own.
//!
//! Each message goes through `send::handle`, exactly as a unary Send
//! (validation, the grant check, the coalescer that shares Redis calls
//! among everything being sent), so messages of every stream are appended
//! in shared, pipelined calls. A pump task reads the request stream while
//! fewer than the window's messages are unanswered, runs them concurrently,
//! and hands each answer to the response stream through a channel. A
//! message counts as unanswered until its response leaves the channel for
//! the transport; at the window the pump stops reading, so HTTP/2 flow
//! control holds the client back and nothing buffers without bound. On
//! drain it stops reading, answers what it has read, and ends the stream
//! with UNAVAILABLE. A message refused because leanmqd is shutting down
//! (it was read as the coalescer stopped) is stored nowhere and left
//! unanswered, so the SDK resends it on its next stream under the
//! idempotency key it gave it, as it does every unanswered message.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::stream::FuturesUnordered;
use futures::StreamExt as _;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tonic::{Status, Streaming};

use crate::error::{Error, Result};
use crate::proto;
use crate::shutdown::Drain;

/// The response header that announces the window.
pub const WINDOW_HEADER: &str = "leanmq-publish-window";

pub type PublishStream = Pin<
    Box<dyn futures::Stream<Item = std::result::Result<proto::PublishResponse, Status>> + Send>,
>;

/// What the pump sends: an answer with its window place, or the stream's end.
type Item = std::result::Result<(proto::PublishResponse, OwnedSemaphorePermit), Status>;

/// Start the pump over `input`, `send` appending one message as a Send
/// would; the response announces the window.
pub fn handle<F, Fut>(
    window: usize,
    drain: &Drain,
    input: Streaming<proto::PublishRequest>,
    send: F,
) -> tonic::Response<PublishStream>
where
    F: Fn(proto::SendRequest) -> Fut + Send + 'static,
    Fut: Future<Output = Result<proto::SendResponse>> + Send + 'static,
{
    let mut resp = tonic::Response::new(stream(window, drain, input, send));
    resp.metadata_mut().insert(
        WINDOW_HEADER,
        tonic::metadata::MetadataValue::from(window as u64),
    );
    resp
}

fn stream<S, F, Fut>(window: usize, drain: &Drain, input: S, send: F) -> PublishStream
where
    S: futures::Stream<Item = std::result::Result<proto::PublishRequest, Status>>
        + Send
        + Unpin
        + 'static,
    F: Fn(proto::SendRequest) -> Fut + Send + 'static,
    Fut: Future<Output = Result<proto::SendResponse>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Item>(window.max(1) + 1);
    drain.spawn(pump(window, drain.clone(), input, send, tx));
    let out = futures::stream::unfold(rx, |mut rx| async move {
        // The permit drops here, as the answer leaves for the transport.
        let item = rx.recv().await?;
        Some((item.map(|(resp, _permit)| resp), rx))
    });
    Box::pin(out)
}

async fn pump<S, F, Fut>(window: usize, drain: Drain, mut input: S, send: F, tx: mpsc::Sender<Item>)
where
    S: futures::Stream<Item = std::result::Result<proto::PublishRequest, Status>>
        + Send
        + Unpin
        + 'static,
    F: Fn(proto::SendRequest) -> Fut + Send + 'static,
    Fut: Future<Output = Result<proto::SendResponse>> + Send + 'static,
{
    let places = Arc::new(Semaphore::new(window.max(1)));
    let mut running = FuturesUnordered::new();
    let mut place: Option<OwnedSemaphorePermit> = None;
    let mut reading = true;
    // How the stream ends once every answer is out: OK, or the client's
    // broken request stream, or UNAVAILABLE on drain.
    let mut end: Option<Status> = None;
    let draining = drain.draining();
    tokio::pin!(draining);
    while reading || !running.is_empty() {
        tokio::select! {
            biased;
            Some((resp, place, closing)) = running.next(), if !running.is_empty() => {
                if closing {
                    reading = false;
                    end = Some(Error::ShuttingDown.into());
                } else if tx.send(Ok((resp, place))).await.is_err() {
                    return; // the client went away
                }
            }
            _ = &mut draining, if reading => {
                reading = false;
                end = Some(Error::ShuttingDown.into());
            }
            p = places.clone().acquire_owned(), if reading && place.is_none() => match p {
                Ok(p) => place = Some(p),
                Err(_) => reading = false,
            },
            req = input.next(), if reading && place.is_some() => match req {
                Some(Ok(req)) => {
                    if let Some(p) = place.take() {
                        running.push(one(&send, req, p));
                    }
                }
                // The client closed its side, or broke it: answer what was read.
                Some(Err(status)) => {
                    reading = false;
                    end = Some(status);
                }
                None => reading = false,
            },
        }
    }
    if let Some(status) = end {
        let _ = tx.send(Err(status)).await;
    }
}

/// One message's answer, holding its window place, and whether it was
/// refused because leanmqd is shutting down (then it goes unanswered).
fn one<F, Fut>(
    send: &F,
    req: proto::PublishRequest,
    place: OwnedSemaphorePermit,
) -> impl Future<Output = (proto::PublishResponse, OwnedSemaphorePermit, bool)>
where
    F: Fn(proto::SendRequest) -> Fut,
    Fut: Future<Output = Result<proto::SendResponse>>,
{
    let sequence = req.sequence;
    let sent = req
        .message
        .map(send)
        .ok_or_else(|| Error::invalid("message is required"));
    async move {
        let result = match sent {
            Ok(fut) => fut.await,
            Err(e) => Err(e),
        };
        let closing = matches!(result, Err(Error::ShuttingDown));
        (answer(sequence, result), place, closing)
    }
}

/// A Send's result as a Publish response.
pub fn answer(sequence: u64, result: Result<proto::SendResponse>) -> proto::PublishResponse {
    match result {
        Ok(s) => proto::PublishResponse {
            sequence,
            message_id: s.message_id,
            duplicate: s.duplicate,
            schedule_id: s.schedule_id,
            code: 0,
            error: String::new(),
        },
        Err(e) => {
            let status = Status::from(e);
            proto::PublishResponse {
                sequence,
                code: status.code() as i32,
                error: status.message().to_string(),
                ..Default::default()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn req(sequence: u64) -> std::result::Result<proto::PublishRequest, Status> {
        Ok(proto::PublishRequest {
            sequence,
            message: Some(proto::SendRequest {
                path: "/w".into(),
                ..Default::default()
            }),
        })
    }

    /// Reads stop at the window while nothing is answered, and resume one
    /// for one as answers are taken; every message is answered once.
    #[tokio::test]
    async fn the_window_caps_what_is_read_ahead_of_the_answers() {
        const WINDOW: usize = 4;
        let read = Arc::new(AtomicUsize::new(0));
        let r = read.clone();
        let input = futures::stream::iter((0..20).map(req)).inspect(move |_| {
            r.fetch_add(1, Ordering::SeqCst);
        });
        // Appends wait for a gate the test opens one by one.
        let gate = Arc::new(Semaphore::new(0));
        let g = gate.clone();
        let drain = Drain::new();
        let mut out = stream(WINDOW, &drain, input, move |m| {
            let g = g.clone();
            async move {
                let _open = g.acquire().await.map_err(|_| Error::ShuttingDown)?;
                Ok(proto::SendResponse {
                    message_id: m.path,
                    ..Default::default()
                })
            }
        });
        let settled = |n: usize| {
            let read = read.clone();
            async move {
                for _ in 0..1000 {
                    if read.load(Ordering::SeqCst) >= n {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                // Give the pump every chance to read further than it may.
                for _ in 0..100 {
                    tokio::task::yield_now().await;
                }
                read.load(Ordering::SeqCst)
            }
        };
        assert_eq!(settled(WINDOW).await, WINDOW, "read ahead of the window");
        let mut seen = Vec::new();
        for k in 0..20 {
            gate.add_permits(1);
            let answer = out.next().await.expect("an answer").expect("ok");
            assert_eq!(answer.code, 0);
            seen.push(answer.sequence);
            // One answer taken: one more place, and no more.
            assert_eq!(
                settled((WINDOW + k + 1).min(20)).await,
                (WINDOW + k + 1).min(20)
            );
        }
        assert!(out.next().await.is_none(), "the stream ends OK");
        seen.sort_unstable();
        assert_eq!(seen, (0..20).collect::<Vec<u64>>());
    }

    #[tokio::test]
    async fn on_drain_it_answers_what_it_read_then_ends_unavailable() {
        let drain = Drain::new();
        // A client that sends two messages and keeps its side open.
        let input = futures::stream::iter((0..2).map(req)).chain(futures::stream::pending());
        let mut out = stream(10, &drain, Box::pin(input), |m| async move {
            Ok(proto::SendResponse {
                message_id: m.path,
                ..Default::default()
            })
        });
        for _ in 0..2 {
            assert_eq!(out.next().await.expect("answer").expect("ok").code, 0);
        }
        drain.trigger();
        let end = out.next().await.expect("an end").expect_err("unavailable");
        assert_eq!(end.code(), tonic::Code::Unavailable);
        assert!(out.next().await.is_none());
    }

    #[tokio::test]
    async fn a_message_refused_for_shutdown_goes_unanswered_and_the_stream_ends_unavailable() {
        let drain = Drain::new();
        // The client keeps its side open; every Send finds the coalescer stopped.
        let input = futures::stream::iter((0..3).map(req)).chain(futures::stream::pending());
        let mut out = stream(1, &drain, Box::pin(input), |_| async {
            Err::<proto::SendResponse, _>(Error::ShuttingDown)
        });
        // A window of 1: message 0 is refused before 1 is read, and no
        // answer says so; the end tells the client to reconnect and resend.
        let end = out.next().await.expect("an end").expect_err("unavailable");
        assert_eq!(end.code(), tonic::Code::Unavailable);
        assert!(out.next().await.is_none());
    }

    #[test]
    fn an_error_keeps_its_code_and_message() {
        let a = answer(7, Err(Error::invalid("bad path")));
        assert_eq!(a.sequence, 7);
        assert_eq!(a.code, tonic::Code::InvalidArgument as i32);
        assert!(a.error.contains("bad path"), "{}", a.error);
        assert!(a.message_id.is_empty());
    }
}
