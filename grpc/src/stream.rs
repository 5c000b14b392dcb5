//! One Decode stream, from its first message to its last answer.
//!
//! It runs on the tokio task that reads the client's messages, and waits
//! for the next one against four ends: the handshake or idle deadline
//! (DEADLINE_EXCEEDED), the reply queue cut for a client that stopped
//! reading (RESOURCE_EXHAUSTED, see [`crate::replies`]), the client gone,
//! and the server's drain deadline (UNAVAILABLE). Each ends this stream
//! only; its unfinished shots end with it.

use std::sync::Arc;
use std::time::Duration;

use qecd_service::Hub;
use qecd_service::api::{Fault, Sink, Status as ServiceStatus};
use qecd_service::session::{Gone, Stream};
use tonic::{Code, Streaming};

use crate::convert;
use crate::proto::{DecodeRequest, decode_request::Message as In};
use crate::replies::ReplySender;
use crate::server::Phase;

/// Seconds as the flags take them: "10 s", "0.3 s".
pub(crate) fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// Waits for `d`; forever when it is zero (a timeout of zero is off).
async fn deadline(d: Duration) {
    if d.is_zero() {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(d).await;
}

/// Resolves once the drain deadline has passed (or the server is gone).
pub(crate) async fn closing(mut phase: tokio::sync::watch::Receiver<Phase>) {
    let _ = phase.wait_for(|p| *p == Phase::Closing).await;
}

/// The fault of a stream still open at the drain deadline.
pub(crate) fn shutting_down(hub: &Hub) -> Fault {
    Fault::new(
        ServiceStatus::Unavailable,
        format!("the server is shutting down (--drain-timeout {})", secs(hub.options.drain_timeout)),
    )
}

/// What a failed read of the client's next message means: `None` when the
/// client went away (nobody to tell), else the fault of a message that
/// could not be decoded.
///
/// tonic reports both as a status. Transport failures come from hyper or
/// h2 (a reset stream, a dropped connection): CANCELLED, UNAVAILABLE, or a
/// status that says "h2 protocol error" or has the transport's error as its
/// source. What is left is tonic's own decoding: a message past its size
/// limit (OUT_OF_RANGE), bytes that are not the protobuf (INTERNAL), a
/// message cut short by the end of the stream.
pub(crate) fn read_failure(status: &tonic::Status) -> Option<Fault> {
    let transport = matches!(status.code(), Code::Cancelled | Code::Unavailable | Code::Unknown)
        || status.message().starts_with("h2 protocol error")
        || std::error::Error::source(status).is_some();
    (!transport).then(|| Fault::invalid(format!("undecodable message: {}", status.message())))
}

/// Runs one Decode stream until the client's messages end and every answer
/// owed has been sent, or one of the module doc's ends comes. Each message
/// is handled right here, on the task that read it, and a neural round is
/// stepped here too when the engine is idle (see [`Stream`]); only opening
/// the session and waiting for the last answers leave the async runtime.
pub(crate) async fn run(
    hub: Arc<Hub>,
    mut inbound: Streaming<DecodeRequest>,
    replies: ReplySender,
    phase: tokio::sync::watch::Receiver<Phase>,
) -> Result<(), Fault> {
    let handshake = hub.options.handshake_timeout;
    let first = tokio::select! {
        message = inbound.message() => message,
        _ = deadline(handshake) => {
            return Err(Fault::new(
                ServiceStatus::DeadlineExceeded,
                format!("no session opened within {} (--handshake-timeout {0}): send `open` first", secs(handshake)),
            ));
        }
        _ = closing(phase.clone()) => return Err(shutting_down(&hub)),
        _ = replies.cut_or_gone() => return Ok(()),
    };
    let open = match first {
        Ok(Some(DecodeRequest { message: Some(In::Open(open)) })) => convert::open_request(open)?,
        Ok(Some(_)) => {
            return Err(Fault::new(
                ServiceStatus::FailedPrecondition,
                "no session opened: the first message of a Decode stream must be `open`",
            ));
        }
        Ok(None) => return Ok(()),
        Err(status) => return read_failure(&status).map_or(Ok(()), Err),
    };
    let gone: Gone = {
        let (replies, phase) = (replies.clone(), phase.clone());
        Arc::new(move || replies.is_gone() || *phase.borrow() == Phase::Closing)
    };
    let sink: Sink = {
        let replies = replies.clone();
        Arc::new(move |r| replies.send(convert::response(r)))
    };
    let opening = {
        let hub = hub.clone();
        tokio::task::spawn_blocking(move || Stream::open_or_cancel(hub, open, sink, gone))
    };
    let stream = tokio::select! {
        opened = opening => opened.map_err(|e| Fault::internal(format!("opening the session failed: {e}")))??,
        // The open sees the deadline through `gone` and stops.
        _ = closing(phase.clone()) => return Err(shutting_down(&hub)),
    };
    serve_stream(&hub, stream, inbound, replies, phase).await
}

/// Feeds an open stream its client's messages until they end, then waits
/// for its last answers.
async fn serve_stream(
    hub: &Hub,
    stream: Arc<Stream>,
    mut inbound: Streaming<DecodeRequest>,
    replies: ReplySender,
    phase: tokio::sync::watch::Receiver<Phase>,
) -> Result<(), Fault> {
    stream.span().in_scope(|| tracing::debug!("opened over gRPC"));
    let ended = |fault: Fault| {
        stream.abandon();
        stream.span().in_scope(|| tracing::info!(status = ?fault.status, "stream ended: {}", fault.message));
        Err(fault)
    };
    // The stream's other ends are futures made once, not once a message.
    // The idle timer is armed once an idle period: a message only notes
    // when it came, and the timer, firing early, re-arms from that.
    let idle = hub.options.idle_timeout;
    let mut last_heard = tokio::time::Instant::now();
    let mut idle_timer = std::pin::pin!(tokio::time::sleep(if idle.is_zero() { Duration::MAX } else { idle }));
    let mut cut_or_gone = std::pin::pin!(replies.cut_or_gone());
    let mut closing = std::pin::pin!(closing(phase));
    let mut finished = false;
    while !finished {
        // Handle every message that has arrived before stepping, so that a
        // client sending faster than the engine steps shows up as this
        // stream's backlog (and falls back), not as bytes piling up unread.
        let mut next = Some(tokio::select! {
            message = inbound.message() => message,
            _ = &mut idle_timer => {
                if last_heard.elapsed() < idle {
                    idle_timer.as_mut().reset(last_heard + idle);
                    continue;
                }
                return ended(Fault::new(
                    ServiceStatus::DeadlineExceeded,
                    format!("nothing received for {} (--idle-timeout {0}); the stream's unfinished shots end with it", secs(idle)),
                ));
            }
            _ = &mut cut_or_gone => break,
            _ = &mut closing => return ended(shutting_down(hub)),
        });
        last_heard = tokio::time::Instant::now();
        while let Some(message) = next.take() {
            let input = match message {
                Ok(Some(DecodeRequest { message })) => convert::input(message),
                Ok(None) => {
                    finished = true;
                    break;
                }
                Err(status) => match read_failure(&status) {
                    Some(fault) => return ended(fault),
                    None => {
                        finished = true; // the client went away
                        break;
                    }
                },
            };
            if let Err(fault) = stream.input(input) {
                return ended(fault);
            }
            next = ready_now(inbound.message());
        }
        stream.drive();
        finished |= stream.is_closed();
    }
    if replies.is_cut() || replies.is_gone() {
        stream.abandon();
        if replies.is_cut() {
            stream.span().in_scope(|| tracing::info!("stream ended: its client left too many replies unread"));
        }
        return Ok(()); // the reply queue yields RESOURCE_EXHAUSTED itself
    }
    let ending = {
        let stream = stream.clone();
        tokio::task::spawn_blocking(move || stream.end())
    };
    tokio::select! {
        _ = ending => Ok(()),
        _ = &mut closing => ended(shutting_down(hub)),
    }
}

/// The future's output if it is ready without waiting. Polling
/// `Streaming::message` and dropping it unfinished loses nothing: its state
/// lives in the stream.
fn ready_now<F: std::future::Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_failures_are_the_clients_and_transport_failures_are_not() {
        for status in [
            tonic::Status::internal("failed to decode Protobuf message: DecodeRequest.message: buffer underflow"),
            tonic::Status::out_of_range("Error, decoded message length too large: found 5242893 bytes"),
            tonic::Status::internal("Unexpected EOF decoding stream."),
        ] {
            let fault = read_failure(&status).expect("undecodable");
            assert_eq!(fault.status, ServiceStatus::InvalidArgument);
            assert!(fault.message.starts_with("undecodable message: "), "{}", fault.message);
        }
        for status in [
            tonic::Status::cancelled("h2 protocol error: stream no longer needed"),
            tonic::Status::internal("h2 protocol error: error reading a body from connection"),
            tonic::Status::unknown("connection reset"),
        ] {
            assert!(read_failure(&status).is_none(), "{status:?}");
        }
    }

    #[test]
    fn seconds_read_as_the_flags_take_them() {
        assert_eq!(secs(Duration::from_secs(10)), "10 s");
        assert_eq!(secs(Duration::from_millis(300)), "0.3 s");
    }
}
