//! The machine's queues (the actions for the driver, the events): first
//! in, first out, with the oldest item held inline.

use std::collections::VecDeque;

/// A first-in first-out queue that holds its oldest item inside itself and
/// the rest in a [`VecDeque`], boxed and made on first use.
///
/// Nearly every input leaves at most one action and one event, which the
/// driver takes at once: they never reach the `VecDeque`, which then is
/// never made. With a plain `VecDeque`, each machine kept a buffer of its
/// own on the heap, away from the rest of its state, and a fleet of
/// machines (the simulator's hundred thousand) spent much of its time
/// waiting for the processor to fetch those buffers from memory; inline,
/// an empty one still took 32 bytes of the machine (a pointer takes 8).
#[derive(Debug, Clone)]
pub(super) struct Fifo<T> {
    /// The oldest item; `None` only when the queue is empty.
    front: Option<T>,
    /// The items after it, in order (none: no queue made yet). Boxed on
    /// purpose, whatever clippy says of boxed collections: the second
    /// allocation is made once per machine at most, and the machine keeps
    /// a pointer (8 bytes) where a `VecDeque` takes 32.
    #[allow(clippy::box_collection)]
    rest: Option<Box<VecDeque<T>>>,
}

impl<T> Default for Fifo<T> {
    fn default() -> Self {
        Fifo {
            front: None,
            rest: None,
        }
    }
}

impl<T> Fifo<T> {
    /// Queues `item` after every item queued.
    #[inline]
    pub(super) fn push_back(&mut self, item: T) {
        if self.front.is_none() {
            debug_assert!(self.rest.as_ref().is_none_or(|rest| rest.is_empty()));
            self.front = Some(item);
        } else {
            self.push_rest(item);
        }
    }

    #[cold]
    fn push_rest(&mut self, item: T) {
        self.rest.get_or_insert_default().push_back(item);
    }

    /// Takes the oldest item out.
    #[inline]
    pub(super) fn pop_front(&mut self) -> Option<T> {
        let item = self.front.take()?;
        self.front = self.rest.as_mut().and_then(|rest| rest.pop_front());
        Some(item)
    }

    /// How many items are queued.
    pub(super) fn len(&self) -> usize {
        usize::from(self.front.is_some()) + self.rest.as_ref().map_or(0, |rest| rest.len())
    }

    /// The queued items, oldest first.
    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = &T> {
        self.front
            .iter()
            .chain(self.rest.iter().flat_map(|rest| rest.iter()))
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
