//! A Decode stream's reply queue, bounded in bytes.
//!
//! Its writer is the stream's sink, which the neural engine calls from its
//! stepping callback: it must never block, so the channel itself is
//! unbounded and the bound is a count of the encoded bytes queued and not
//! yet taken by tonic. A client that stops reading lets its replies pile up
//! here (HTTP/2 flow control stops tonic taking them); past
//! `--max-reply-bytes` the queue is cut: the writer's sends fail, so the
//! stream stops, the queued replies are dropped, and the reader yields
//! RESOURCE_EXHAUSTED and ends. No other stream notices.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use prost::Message as _;
use tokio::sync::Notify;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tonic::Status;

use crate::proto::DecodeResponse;

/// What the queue carries: a reply with its encoded size, or the stream's last status.
enum Queued {
    Reply(DecodeResponse, usize),
    End(Status),
}

/// What the writer and the reader of one queue share.
struct Shared {
    /// Encoded bytes of the replies queued and not yet taken by tonic.
    queued: AtomicUsize,
    /// `--max-reply-bytes`.
    limit: usize,
    /// Set once `queued` would have passed `limit`.
    cut: AtomicBool,
    /// Wakes [`ReplySender::cut_or_gone`] when the queue is cut.
    on_cut: Notify,
}

/// A queue of at most `limit` unread reply bytes: its writer and its reader.
pub(crate) fn queue(limit: usize) -> (ReplySender, Replies) {
    let (tx, rx) = unbounded_channel();
    let shared =
        Arc::new(Shared { queued: AtomicUsize::new(0), limit, cut: AtomicBool::new(false), on_cut: Notify::new() });
    (ReplySender { tx, shared: shared.clone() }, Replies { rx: Some(rx), shared })
}

/// The writing end of a stream's reply queue. It never blocks.
#[derive(Clone)]
pub(crate) struct ReplySender {
    tx: UnboundedSender<Queued>,
    shared: Arc<Shared>,
}

impl ReplySender {
    /// Queues a reply. False once the client has gone or has left more than
    /// the bound unread (the queue is then cut).
    pub(crate) fn send(&self, reply: DecodeResponse) -> bool {
        if self.shared.cut.load(Ordering::Acquire) {
            return false;
        }
        let len = reply.encoded_len();
        let queued = self.shared.queued.fetch_add(len, Ordering::AcqRel) + len;
        if queued > self.shared.limit {
            self.cut();
            return false;
        }
        self.tx.send(Queued::Reply(reply, len)).is_ok()
    }

    /// Ends the stream with `status`, after the replies already queued.
    pub(crate) fn end(&self, status: Status) {
        let _ = self.tx.send(Queued::End(status));
    }

    /// True once tonic has dropped the reader: the client left.
    pub(crate) fn is_gone(&self) -> bool {
        self.tx.is_closed()
    }

    /// True once the client left more than the bound unread.
    pub(crate) fn is_cut(&self) -> bool {
        self.shared.cut.load(Ordering::Acquire)
    }

    /// Resolves once the queue is cut or the client has left.
    pub(crate) async fn cut_or_gone(&self) {
        loop {
            let notified = self.shared.on_cut.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check, so a cut in between still wakes it.
            notified.as_mut().enable();
            if self.is_cut() {
                return;
            }
            tokio::select! {
                _ = notified => {}
                _ = self.tx.closed() => return,
            }
        }
    }

    fn cut(&self) {
        if self.shared.cut.swap(true, Ordering::AcqRel) {
            return;
        }
        self.shared.on_cut.notify_waiters();
        // Wakes a reader waiting on an empty queue; it yields the status, not this.
        let _ = self.tx.send(Queued::End(Status::cancelled("")));
    }
}

/// The reading end, which tonic polls for the response stream.
pub struct Replies {
    /// `None` once the stream has ended.
    rx: Option<UnboundedReceiver<Queued>>,
    shared: Arc<Shared>,
}

impl Replies {
    /// The status of a cut queue.
    fn exhausted(&self) -> Status {
        let limit = self.shared.limit;
        Status::resource_exhausted(format!(
            "the client left more than {limit} bytes of replies unread (--max-reply-bytes {limit}); \
             read the response stream as it comes"
        ))
    }
}

impl tokio_stream::Stream for Replies {
    type Item = Result<DecodeResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(rx) = self.rx.as_mut() else { return Poll::Ready(None) };
        let next = rx.poll_recv(cx);
        if self.shared.cut.load(Ordering::Acquire) {
            // Dropping the receiver frees every reply still queued.
            self.rx = None;
            return Poll::Ready(Some(Err(self.exhausted())));
        }
        match std::task::ready!(next) {
            Some(Queued::Reply(reply, len)) => {
                self.shared.queued.fetch_sub(len, Ordering::AcqRel);
                Poll::Ready(Some(Ok(reply)))
            }
            Some(Queued::End(status)) => {
                self.rx = None;
                Poll::Ready(Some(Err(status)))
            }
            None => {
                self.rx = None;
                Poll::Ready(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    use super::*;
    use crate::proto::{RoundAck, decode_response::Message as Out};

    fn ack(shot: u64) -> DecodeResponse {
        let ack = RoundAck { shot, round: 1, step_latency_ns: 1000, budget_met: true, backlog: 0 };
        DecodeResponse { message: Some(Out::Ack(ack)) }
    }

    #[tokio::test]
    async fn replies_read_as_they_come_never_reach_the_bound() {
        let (tx, mut rx) = queue(3 * ack(0).encoded_len());
        for shot in 0..1000 {
            assert!(tx.send(ack(shot)));
            assert_eq!(rx.next().await.unwrap().unwrap(), ack(shot));
        }
        assert_eq!(tx.shared.queued.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn past_the_bound_the_queue_is_cut_and_its_reader_gets_resource_exhausted() {
        // Shots 1..=5 encode to the same size (shot 0 would be left out of the encoding).
        let len = ack(1).encoded_len();
        let (tx, mut rx) = queue(3 * len);
        assert!((1..=3).all(|shot| tx.send(ack(shot))));
        assert!(!tx.is_cut());
        assert!(!tx.send(ack(4)), "the fourth reply passes the bound");
        assert!(tx.is_cut());
        assert!(!tx.send(ack(5)), "a cut queue takes nothing more");
        tx.cut_or_gone().await;
        let status = rx.next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains(&format!("--max-reply-bytes {}", 3 * len)), "{}", status.message());
        assert!(rx.next().await.is_none(), "the queued replies are dropped with the stream");
    }

    #[tokio::test]
    async fn the_last_status_follows_the_queued_replies() {
        let (tx, mut rx) = queue(1 << 20);
        assert!(tx.send(ack(0)));
        tx.end(Status::deadline_exceeded("idle"));
        assert_eq!(rx.next().await.unwrap().unwrap(), ack(0));
        assert_eq!(rx.next().await.unwrap().unwrap_err().code(), tonic::Code::DeadlineExceeded);
        assert!(rx.next().await.is_none());
        drop(rx);
        assert!(tx.is_gone());
        tx.cut_or_gone().await;
    }
}
