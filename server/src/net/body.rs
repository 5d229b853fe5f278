//! Request bodies read against a shared byte budget: each body has its own cap, and all the bodies
//! being read or parsed at once share one total, so many clients sending the largest allowed body
//! together cannot take the server's memory (64 MB × 100 connections is 6.4 GB).

use axum::body::{Body, Bytes};
use futures::StreamExt;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The budget is counted in KiB (a semaphore's permits are a `u32` per call).
const UNIT: usize = 1024;

/// Bytes of request bodies held at once, all requests together.
#[derive(Clone)]
pub struct BodyBudget {
    permits: Arc<Semaphore>,
    total: usize,
}

/// Why a body was not read.
#[derive(Debug, PartialEq)]
pub enum BodyError {
    /// Over this request's cap (bytes).
    TooLarge(usize),
    /// The shared budget is spent: other requests hold it; try again soon.
    Busy(usize),
    /// The connection failed while the body arrived.
    Read(String),
}

/// Body bytes held against the budget until dropped (keep it while the body is parsed).
pub struct Held {
    _permit: Option<OwnedSemaphorePermit>,
}

impl BodyBudget {
    pub fn new(total_bytes: usize) -> Self {
        let units = (total_bytes / UNIT).max(1);
        Self {
            permits: Arc::new(Semaphore::new(units)),
            total: units * UNIT,
        }
    }

    /// Bytes of the budget free now.
    pub fn available(&self) -> usize {
        self.permits.available_permits() * UNIT
    }

    /// Reads `body` (announced as `content_length`, if it said) up to `max` bytes, taking its
    /// bytes from the budget as they arrive; never waits for the budget.
    pub async fn read(
        &self,
        body: Body,
        content_length: Option<u64>,
        max: usize,
    ) -> Result<(Bytes, Held), BodyError> {
        if content_length.is_some_and(|n| n > max as u64) {
            return Err(BodyError::TooLarge(max));
        }
        let mut held: Option<OwnedSemaphorePermit> = None;
        let mut units = 0usize;
        let mut data = Vec::new();
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| BodyError::Read(e.to_string()))?;
            if data.len() + chunk.len() > max {
                return Err(BodyError::TooLarge(max));
            }
            data.extend_from_slice(&chunk);
            let need = data.len().div_ceil(UNIT).saturating_sub(units);
            if need > 0 {
                let more = u32::try_from(need)
                    .ok()
                    .and_then(|n| self.permits.clone().try_acquire_many_owned(n).ok())
                    .ok_or(BodyError::Busy(self.total))?;
                units += need;
                match held.as_mut() {
                    Some(h) => h.merge(more),
                    None => held = Some(more),
                }
            }
        }
        Ok((Bytes::from(data), Held { _permit: held }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bodies_share_the_budget_and_give_it_back() {
        let budget = BodyBudget::new(10 * UNIT);
        let (a, held_a) = budget
            .read(Body::from(vec![1u8; 6 * UNIT]), None, 8 * UNIT)
            .await
            .unwrap();
        assert_eq!(a.len(), 6 * UNIT);
        assert_eq!(budget.available(), 4 * UNIT);
        let busy = budget
            .read(Body::from(vec![1u8; 6 * UNIT]), None, 8 * UNIT)
            .await;
        assert!(matches!(busy, Err(BodyError::Busy(_))));
        // A refused body gave back what it took.
        assert_eq!(budget.available(), 4 * UNIT);
        drop(held_a);
        assert_eq!(budget.available(), 10 * UNIT);
        let too_large = budget.read(Body::from(vec![1u8; 9 * UNIT]), None, 8 * UNIT);
        assert_eq!(too_large.await.err(), Some(BodyError::TooLarge(8 * UNIT)));
        let announced = budget.read(Body::empty(), Some(1 << 40), 8 * UNIT);
        assert_eq!(announced.await.err(), Some(BodyError::TooLarge(8 * UNIT)));
    }
}
