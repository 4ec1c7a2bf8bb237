//! Outgoing requests paced to a provider's limit.

use std::time::Duration;

/// Outgoing messages paced to a provider's limit (`max_messages_per_s`): one every `interval`.
pub(crate) struct Paced<T> {
    queue: std::collections::VecDeque<T>,
    interval: Duration,
    next_at: tokio::time::Instant,
}

impl<T> Paced<T> {
    pub fn new(per_second: f64, now: tokio::time::Instant) -> Self {
        Self {
            queue: std::collections::VecDeque::new(),
            interval: Duration::from_secs_f64(1.0 / per_second),
            next_at: now,
        }
    }

    pub fn push(&mut self, item: T) {
        self.queue.push_back(item);
    }

    /// What is queued, in order.
    #[cfg(test)]
    pub fn queued(&self) -> impl Iterator<Item = &T> {
        self.queue.iter()
    }

    /// When the next message may go, if one is queued.
    pub fn due_at(&self) -> Option<tokio::time::Instant> {
        (!self.queue.is_empty()).then_some(self.next_at)
    }

    /// The next message, if one is queued and its turn has come.
    pub fn pop_due(&mut self, now: tokio::time::Instant) -> Option<T> {
        if now < self.next_at {
            return None;
        }
        let item = self.queue.pop_front()?;
        self.next_at = now + self.interval;
        Some(item)
    }
}
