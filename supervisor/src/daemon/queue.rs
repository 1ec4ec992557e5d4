//! The bounded priority queue of tasks waiting for a shadow slot.
//!
//! Three FIFO lanes, `high` before `normal` before `low`. The capacity bounds the number of
//! queued tasks (running ones do not count); a push to a full queue is refused at once, never
//! blocks: that refusal is the backpressure clients see as `queue_full`.

use std::collections::VecDeque;

use kugetsu_protocol::Priority;

/// Why a task was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("queue_full: {len} tasks queued, capacity {capacity}")]
pub struct QueueFull {
    pub len: usize,
    pub capacity: usize,
}

/// Task ids waiting to run.
#[derive(Debug, Clone)]
pub struct Queue {
    lanes: [VecDeque<String>; 3],
    capacity: usize,
}

fn lane(priority: Priority) -> usize {
    match priority {
        Priority::High => 0,
        Priority::Normal => 1,
        Priority::Low => 2,
    }
}

impl Queue {
    /// An empty queue holding at most `capacity` tasks.
    pub fn new(capacity: usize) -> Queue {
        Queue {
            lanes: Default::default(),
            capacity,
        }
    }

    /// Number of queued tasks.
    pub fn len(&self) -> usize {
        self.lanes.iter().map(VecDeque::len).sum()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Changes the capacity; tasks already queued beyond it stay queued.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity;
    }

    /// Whether a push would be refused.
    pub fn is_full(&self) -> bool {
        self.len() >= self.capacity
    }

    /// Queues `id` behind the tasks of its priority, unless the queue is full.
    pub fn push(&mut self, id: String, priority: Priority) -> Result<(), QueueFull> {
        if self.is_full() {
            return Err(QueueFull {
                len: self.len(),
                capacity: self.capacity,
            });
        }
        self.lanes[lane(priority)].push_back(id);
        Ok(())
    }

    /// Queues `id` regardless of capacity (tasks recovered after a restart).
    pub fn push_recovered(&mut self, id: String, priority: Priority) {
        self.lanes[lane(priority)].push_back(id);
    }

    /// Every queued task in run order.
    pub fn iter(&self) -> impl Iterator<Item = &String> {
        self.lanes.iter().flatten()
    }

    /// The task [`Queue::pop`] would return, left in place.
    pub fn peek(&self) -> Option<&str> {
        self.lanes
            .iter()
            .find_map(|lane| lane.front())
            .map(String::as_str)
    }

    /// The next task to run: the oldest of the highest priority.
    pub fn pop(&mut self) -> Option<String> {
        self.lanes.iter_mut().find_map(VecDeque::pop_front)
    }

    /// Removes `id` wherever it waits; returns whether it was queued.
    pub fn remove(&mut self, id: &str) -> bool {
        for lane in &mut self.lanes {
            if let Some(i) = lane.iter().position(|t| t == id) {
                lane.remove(i);
                return true;
            }
        }
        false
    }

    /// 1-based position of `id` in run order, if queued.
    pub fn position(&self, id: &str) -> Option<usize> {
        self.lanes
            .iter()
            .flatten()
            .position(|t| t == id)
            .map(|i| i + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_first_then_fifo_and_full_is_refused_at_once() {
        let mut q = Queue::new(4);
        q.push("n1".into(), Priority::Normal).unwrap();
        q.push("l1".into(), Priority::Low).unwrap();
        q.push("h1".into(), Priority::High).unwrap();
        q.push("n2".into(), Priority::Normal).unwrap();
        let full = q.push("h2".into(), Priority::High).unwrap_err();
        assert_eq!(
            full,
            QueueFull {
                len: 4,
                capacity: 4
            }
        );
        assert_eq!(q.position("n2"), Some(3));
        assert!(q.remove("n1"));
        assert!(!q.remove("n1"));
        q.push("h2".into(), Priority::High).unwrap();
        let order: Vec<String> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, ["h1", "h2", "n2", "l1"]);
        assert!(q.is_empty());
    }
}
