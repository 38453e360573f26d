//! The server's memory budget: bytes that request bodies and responses hold at once, over all
//! connections ([`Limits::max_in_flight_bytes`](super::Limits::max_in_flight_bytes)).
//!
//! Per-request limits bound one request; they do not bound a hundred of them at once, nor
//! responses that slow clients take their time to read. So every large body is charged to one
//! semaphore of bytes before it is read or built, and the charge is held by the response body
//! until the client has taken it. Small bodies (under [`SMALL`]) are not charged: the
//! connection limit bounds them, and charging them would cost every request a semaphore round
//! trip for nothing.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;

/// Bodies below this size are not charged.
pub(crate) const SMALL: usize = 64 << 10;

/// How long a request waits for room in the budget before it is answered 503.
const WAIT: Duration = Duration::from_secs(5);

/// A response body is handed to the connection in pieces of this size, so that the connection
/// pulls the next piece only when it has written the last (and the charge is held, and the
/// request counted in progress, until the last piece is taken).
const PIECE: usize = 64 << 10;

/// The semaphore of bytes.
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    bytes: Arc<Semaphore>,
    total: usize,
}

/// Bytes held against the budget; given back when dropped.
#[derive(Debug)]
pub(crate) struct Charge(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl Charge {
    /// Nothing charged.
    pub(crate) fn free() -> Charge {
        Charge(None)
    }

    /// Gives back what this charge holds beyond `bytes`: a charge taken for the most an answer
    /// could be, once the answer is built.
    pub(crate) fn keep(&mut self, bytes: usize) {
        let Some(permit) = &mut self.0 else { return };
        let held = permit.num_permits();
        if bytes < held {
            drop(permit.split(held - bytes));
        }
    }
}

impl Budget {
    pub(crate) fn new(total: usize) -> Budget {
        let total = total.clamp(1, Semaphore::MAX_PERMITS);
        Budget {
            bytes: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Charges `bytes`, waiting for room for a while; small amounts are free.
    pub(crate) async fn charge(&self, bytes: usize) -> Result<Charge, ApiError> {
        if bytes < SMALL {
            return Ok(Charge(None));
        }
        // One body larger than the whole budget may still pass, alone.
        let bytes = u32::try_from(bytes.min(self.total)).unwrap_or(u32::MAX);
        match tokio::time::timeout(WAIT, self.bytes.clone().acquire_many_owned(bytes)).await {
            Ok(Ok(permit)) => Ok(Charge(Some(permit))),
            _ => Err(ApiError::busy(
                "max_in_flight_bytes",
                format!(
                    "the server is holding its limit of {} bytes of requests and responses \
                 (--max-in-flight-bytes); retry shortly",
                    self.total
                ),
            )),
        }
    }

    /// Charges `bytes` for a request that already holds `held` bytes of the budget (its body):
    /// never more than the budget can give beside them, so that a request never waits for
    /// room that it holds itself.
    pub(crate) async fn charge_beside(
        &self,
        bytes: usize,
        held: usize,
    ) -> Result<Charge, ApiError> {
        self.charge(bytes.min(self.total.saturating_sub(held)))
            .await
    }

    /// Bytes the budget holds in all.
    pub(crate) fn total(&self) -> usize {
        self.total
    }

    /// Bytes charged now.
    pub(crate) fn used(&self) -> usize {
        self.total - self.bytes.available_permits()
    }
}

/// A response body that holds its charge until the client has taken it all. Any body over a
/// piece goes in pieces, charged or not (a write's answer is sent whatever the budget says):
/// handed over whole, it would be taken at once and its request counted as done while most of
/// it still waits for the client, so that its connection could be closed as idle under it.
pub(crate) fn charged_body(bytes: Bytes, charge: Charge) -> Body {
    if charge.0.is_none() && bytes.len() <= PIECE {
        return Body::from(bytes);
    }
    Body::new(Charged {
        rest: bytes,
        charge: Some(charge),
    })
}

struct Charged {
    rest: Bytes,
    charge: Option<Charge>,
}

impl http_body::Body for Charged {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.rest.is_empty() {
            self.charge = None;
            return Poll::Ready(None);
        }
        let take = self.rest.len().min(PIECE);
        let piece = self.rest.split_to(take);
        Poll::Ready(Some(Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.rest.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_charge_is_held_until_the_body_is_taken() {
        let budget = Budget::new(1 << 20);
        let small = budget.charge(100).await.unwrap();
        assert_eq!(budget.used(), 0);
        drop(small);
        let charge = budget.charge(300 << 10).await.unwrap();
        assert_eq!(budget.used(), 300 << 10);
        let body = charged_body(Bytes::from(vec![b'x'; 300 << 10]), charge);
        assert_eq!(budget.used(), 300 << 10);
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(collected.len(), 300 << 10);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn a_charge_for_the_most_keeps_what_the_answer_takes() {
        let budget = Budget::new(1 << 20);
        let mut charge = budget.charge(800 << 10).await.unwrap();
        charge.keep(100 << 10);
        assert_eq!(budget.used(), 100 << 10);
        // Keeping more than it holds holds no more.
        charge.keep(900 << 10);
        assert_eq!(budget.used(), 100 << 10);
        drop(charge);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn a_large_body_goes_in_pieces_charged_or_not() {
        let mut body = charged_body(Bytes::from(vec![b'x'; 3 * PIECE + 1]), Charge::free());
        let mut pieces = Vec::new();
        while let Some(frame) = body.frame().await {
            pieces.push(frame.unwrap().into_data().unwrap().len());
        }
        assert_eq!(pieces, [PIECE, PIECE, PIECE, 1]);
    }

    #[tokio::test]
    async fn a_full_budget_refuses_after_a_wait() {
        tokio::time::pause();
        let budget = Budget::new(1 << 20);
        let _all = budget.charge(1 << 20).await.unwrap();
        let err = budget.charge(100 << 10).await.unwrap_err();
        assert_eq!(err.status.as_u16(), 503);
        assert!(
            err.detail.contains("--max-in-flight-bytes"),
            "{}",
            err.detail
        );
        // More than the whole budget passes alone.
        drop(_all);
        assert!(budget.charge(5 << 20).await.is_ok());
    }
}
