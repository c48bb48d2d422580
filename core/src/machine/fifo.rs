//! The machine's queues (the actions for the driver, the events): first
//! in, first out, with the oldest item held inline.

use std::collections::VecDeque;

/// A first-in first-out queue that holds its oldest item inside itself and
/// the rest in a [`VecDeque`].
///
/// Nearly every input leaves at most one action and one event, which the
/// driver takes at once: they never reach the `VecDeque`, which then never
/// allocates. With a plain `VecDeque`, each machine kept a buffer of its
/// own on the heap, away from the rest of its state, and a fleet of
/// machines (the simulator's hundred thousand) spent much of its time
/// waiting for the processor to fetch those buffers from memory.
#[derive(Debug, Clone)]
pub(super) struct Fifo<T> {
    /// The oldest item; `None` only when the queue is empty.
    front: Option<T>,
    /// The items after it, in order.
    rest: VecDeque<T>,
}

impl<T> Default for Fifo<T> {
    fn default() -> Self {
        Fifo {
            front: None,
            rest: VecDeque::new(),
        }
    }
}

impl<T> Fifo<T> {
    /// Queues `item` after every item queued.
    pub(super) fn push_back(&mut self, item: T) {
        if self.front.is_none() {
            debug_assert!(self.rest.is_empty());
            self.front = Some(item);
        } else {
            self.rest.push_back(item);
        }
    }

    /// Takes the oldest item out.
    pub(super) fn pop_front(&mut self) -> Option<T> {
        let item = self.front.take()?;
        self.front = self.rest.pop_front();
        Some(item)
    }

    /// How many items are queued.
    pub(super) fn len(&self) -> usize {
        usize::from(self.front.is_some()) + self.rest.len()
    }

    /// The queued items, oldest first.
    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = &T> {
        self.front.iter().chain(self.rest.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Items come out in the order they went in, however pushes and pops
    /// interleave, as from a `VecDeque`.
    #[test]
    fn first_in_first_out() {
        let mut rng = fastrand::Rng::with_seed(7);
        let (mut fifo, mut model) = (Fifo::default(), VecDeque::new());
        let (mut next, mut longest) = (0u32, 0);
        for _ in 0..10_000 {
            if rng.u8(0..3) == 0 {
                assert_eq!(fifo.pop_front(), model.pop_front());
            } else {
                fifo.push_back(next);
                model.push_back(next);
                next += 1;
            }
            assert_eq!(fifo.len(), model.len());
            assert!(fifo.iter().eq(model.iter()));
            longest = longest.max(model.len());
        }
        // Not vacuous: items went past the inline one.
        assert!(longest > 2, "{longest}");
    }
}
