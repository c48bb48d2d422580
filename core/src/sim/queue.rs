//! The simulator's event queue: a two-level timing wheel keyed by
//! millisecond.
//!
//! Every event time is a whole millisecond, and no event is ever queued
//! before the one being handled, so the queue is monotone. A ring of
//! one-millisecond buckets holds the next minute or two; a ring of pages
//! (a [`PAGE`] of milliseconds each) holds the next day and a half,
//! unsorted, and a page is spread into the millisecond ring when the
//! present comes within a page of it; anything further out waits in a
//! binary heap. Each item carries a sequence number, and items come out in
//! (time, sequence) order, exactly as a heap ordered by both gives them,
//! but each one costs a few links near the present instead of a heap's
//! log n scattered nodes, which were most of the simulator's work at
//! 100,000 instances. An item may be queued with a sequence number taken
//! earlier (a timeout that was put off): its bucket's list keeps the order.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::prefetch::prefetch;

/// Milliseconds in a page (a power of two).
const PAGE: u64 = 1 << 16;
/// The millisecond ring: two pages.
const RING: u64 = 2 * PAGE;
const RING_MASK: u64 = RING - 1;
const WORDS: usize = (RING / 64) as usize;
/// Pages in the page ring (about 37 hours).
const PAGES: u64 = 1 << 11;

/// An event beyond the page ring, ordered by (time, sequence).
struct Far<T> {
    at: u64,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Far<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<T> Eq for Far<T> {}
impl<T> PartialOrd for Far<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Far<T> {
    // Reversed: BinaryHeap is a max-heap and we want the earliest.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// No node: the end of a list, or an empty bucket.
const NIL: u32 = u32::MAX;

/// A millisecond's list of items: its first and last node. Kept together,
/// so that queueing an item in an empty bucket (most of them, at a few
/// hundred events a second) reads one of the processor's cache lines, not
/// one in each of two arrays.
#[derive(Clone, Copy)]
struct Bucket {
    head: u32,
    tail: u32,
}

impl Bucket {
    const EMPTY: Bucket = Bucket {
        head: NIL,
        tail: NIL,
    };
}

/// An item in the millisecond ring: a link in its bucket's list, by
/// sequence number (or free, without an item).
struct Node<T> {
    seq: u64,
    next: u32,
    item: Option<T>,
}

/// A monotone priority queue of items keyed by (millisecond, sequence
/// number); items after `end` are dropped when pushed.
pub(super) struct EventQueue<T> {
    /// The millisecond being drained: no item is earlier.
    now: u64,
    /// Items after this are never popped, so never kept.
    end: u64,
    /// Items queued and not yet popped.
    len: usize,
    /// The last sequence number handed out.
    seq: u64,
    /// The first millisecond not in the millisecond ring (a page boundary):
    /// bucket `t & RING_MASK` lists the items of millisecond `t`, for `t`
    /// in `[now, spread)`, by sequence number.
    spread: u64,
    /// Each millisecond's list.
    buckets: Vec<Bucket>,
    /// Which buckets are non-empty, one bit each.
    occupied: Vec<u64>,
    /// The ring's items, in one allocation that free nodes are reused from.
    nodes: Vec<Node<T>>,
    /// The free nodes, the last freed on top. A stack apart from the nodes,
    /// not a list through them: taking one reads no node, and a page spread
    /// at once (thousands of items) takes thousands without a chain of
    /// reads from nodes freed long ago, each a wait on memory.
    free: Vec<u32>,
    /// Slot `(t / PAGE) % PAGES` holds the items of the page of `t`, for
    /// the `PAGES` pages from `spread` on.
    pages: Vec<Vec<(u64, u64, T)>>,
    /// Items beyond the page ring.
    far: BinaryHeap<Far<T>>,
}

impl<T> EventQueue<T> {
    /// An empty queue whose first item is at `start` or later.
    pub(super) fn new(start: u64, end: u64) -> Self {
        EventQueue {
            now: start,
            end,
            len: 0,
            seq: 0,
            // The page of `start` is spread from the beginning.
            spread: (start / PAGE + 1) * PAGE,
            buckets: vec![Bucket::EMPTY; RING as usize],
            occupied: vec![0; WORDS],
            nodes: Vec::new(),
            free: Vec::new(),
            pages: (0..PAGES).map(|_| Vec::new()).collect(),
            far: BinaryHeap::new(),
        }
    }

    /// A new sequence number, greater than every one handed out before.
    pub(super) fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Queues `item` at millisecond `at` after every item queued so far at
    /// that millisecond.
    pub(super) fn push(&mut self, at: u64, item: T) {
        let seq = self.next_seq();
        self.push_seq(at, seq, item);
    }

    /// Queues `item` at millisecond `at` with sequence number `seq` (from
    /// [`next_seq`](Self::next_seq), and not queued before), never before
    /// the item last popped: an earlier `at` is taken as that one's time.
    pub(super) fn push_seq(&mut self, at: u64, seq: u64, item: T) {
        debug_assert!(at >= self.now, "event queued in the past");
        let at = at.max(self.now);
        if at > self.end {
            return;
        }
        self.len += 1;
        if at < self.spread {
            self.bucket_push(at, seq, item);
        } else if at / PAGE < self.spread / PAGE + PAGES {
            self.pages[((at / PAGE) % PAGES) as usize].push((at, seq, item));
        } else {
            self.far.push(Far { at, seq, item });
        }
    }

    /// Takes out the item queued at millisecond `at` with sequence number
    /// `seq`, when it is in the millisecond ring (`at` is within a page or
    /// two of the present); returns whether it did. Further out, items
    /// wait unsorted or in a heap, where finding one costs more than
    /// skipping it when it comes.
    pub(super) fn remove(&mut self, at: u64, seq: u64) -> bool {
        if at < self.now || at >= self.spread {
            return false;
        }
        let b = (at & RING_MASK) as usize;
        let mut prev = NIL;
        let mut cur = self.buckets[b].head;
        while cur != NIL && self.nodes[cur as usize].seq < seq {
            prev = cur;
            cur = self.nodes[cur as usize].next;
        }
        if cur == NIL || self.nodes[cur as usize].seq != seq {
            return false;
        }
        let node = &mut self.nodes[cur as usize];
        let next = node.next;
        node.item = None;
        self.free.push(cur);
        if prev == NIL {
            self.buckets[b].head = next;
        } else {
            self.nodes[prev as usize].next = next;
        }
        if next == NIL {
            self.buckets[b].tail = prev;
        }
        if self.buckets[b].head == NIL {
            self.occupied[b / 64] &= !(1 << (b % 64));
        }
        self.len -= 1;
        true
    }

    /// Whether no item is queued at millisecond `at` (the present), so
    /// that an item pushed now would be the next one popped.
    pub(super) fn is_idle_at(&self, at: u64) -> bool {
        at == self.now && self.buckets[(at & RING_MASK) as usize].head == NIL
    }

    /// Puts an item in its bucket's list, in sequence order (nearly always
    /// at the end).
    fn bucket_push(&mut self, at: u64, seq: u64, item: T) {
        let b = (at & RING_MASK) as usize;
        let node = Node {
            seq,
            next: NIL,
            item: Some(item),
        };
        let n = if let Some(n) = self.free.pop() {
            // A free node holds no item: nothing to drop, so nothing to
            // read of it (an assignment would look at its item first).
            std::mem::forget(std::mem::replace(&mut self.nodes[n as usize], node));
            n
        } else {
            self.nodes.push(node);
            u32::try_from(self.nodes.len() - 1).expect("fewer than 2^32 queued events")
        };
        let tail = self.buckets[b].tail;
        debug_assert!(tail == NIL || self.nodes[tail as usize].seq != seq);
        if tail == NIL {
            self.buckets[b].head = n;
            self.buckets[b].tail = n;
            self.occupied[b / 64] |= 1 << (b % 64);
        } else if seq == self.seq || self.nodes[tail as usize].seq < seq {
            // (The newest sequence number comes after every queued one:
            // no need to read the tail's, most often far in memory.)
            self.nodes[tail as usize].next = n;
            self.buckets[b].tail = n;
        } else {
            // An item with a sequence number taken earlier: find its place.
            let mut prev = NIL;
            let mut cur = self.buckets[b].head;
            while self.nodes[cur as usize].seq < seq {
                prev = cur;
                cur = self.nodes[cur as usize].next;
            }
            self.nodes[n as usize].next = cur;
            if prev == NIL {
                self.buckets[b].head = n;
            } else {
                self.nodes[prev as usize].next = n;
            }
        }
    }

    /// The next two items that [`pop`](Self::pop) hands out, as far as
    /// they are at the present or in the next hundred-odd milliseconds
    /// (most often); it asks for the node of the third to be brought into
    /// the processor's caches (see [`prefetch`]), to be read by the `peek`
    /// after the next.
    pub(super) fn peek(&self) -> [Option<&T>; 2] {
        let start = (self.now & RING_MASK) as usize;
        let Some((b, first)) = self.locate(start, self.buckets[start].head) else {
            return [None, None];
        };
        let first = &self.nodes[first as usize];
        let Some((b, second)) = self.locate(b, first.next) else {
            return [first.item.as_ref(), None];
        };
        let second = &self.nodes[second as usize];
        if let Some((_, third)) = self.locate(b, second.next) {
            prefetch(&self.nodes[third as usize]);
        }
        [first.item.as_ref(), second.item.as_ref()]
    }

    /// Where the item after the one in bucket `b` is, given that one's
    /// `next`: `next` itself, or the head of the first occupied bucket
    /// after `b` within the rest of a word of the occupied bits and one
    /// more word (a peek looks no further).
    fn locate(&self, b: usize, next: u32) -> Option<(usize, u32)> {
        if next != NIL {
            return Some((b, next));
        }
        let b = self.first_occupied((b + 1) & RING_MASK as usize, 1)?;
        Some((b, self.buckets[b].head))
    }

    /// The earliest item and its millisecond; `None` when none is left.
    pub(super) fn pop(&mut self) -> Option<(u64, T)> {
        loop {
            let b = (self.now & RING_MASK) as usize;
            let head = self.buckets[b].head;
            if head != NIL {
                let node = &mut self.nodes[head as usize];
                let item = node.item.take();
                self.buckets[b].head = node.next;
                self.free.push(head);
                if self.buckets[b].head == NIL {
                    self.buckets[b].tail = NIL;
                    self.occupied[b / 64] &= !(1 << (b % 64));
                }
                self.len -= 1;
                return item.map(|item| (self.now, item));
            }
            if self.len == 0 {
                return None;
            }
            match self.next_occupied() {
                Some(t) => self.now = t,
                // Nothing before `spread`: on to the next page.
                None => self.now = self.now.max(self.spread - PAGE),
            }
            self.spread_pages();
        }
    }

    /// Spreads every page that begins within a page of the present into
    /// the millisecond ring, with the heap's items of that page.
    fn spread_pages(&mut self) {
        while self.spread <= self.now + PAGE {
            let next = self.spread + PAGE;
            while self.far.peek().is_some_and(|f| f.at < next) {
                let Some(Far { at, seq, item }) = self.far.pop() else {
                    break;
                };
                self.bucket_push(at, seq, item);
            }
            let p = ((self.spread / PAGE) % PAGES) as usize;
            for (at, seq, item) in std::mem::take(&mut self.pages[p]) {
                self.bucket_push(at, seq, item);
            }
            self.spread = next;
        }
    }

    /// The first millisecond in `[now, spread)` with a queued item.
    fn next_occupied(&self) -> Option<u64> {
        let start = (self.now & RING_MASK) as usize;
        let found = self.first_occupied(start, WORDS)?;
        let ahead = (found as u64).wrapping_sub(start as u64) & RING_MASK;
        Some(self.now + ahead)
    }

    /// The first occupied bucket from bucket `b` on, round the ring: the
    /// rest of `b`'s word of the occupied bits, then up to `words` more
    /// words (with `WORDS`, back to the start of `b`'s word).
    fn first_occupied(&self, b: usize, words: usize) -> Option<usize> {
        let (word, bit) = (b / 64, b % 64);
        let first = self.occupied[word] & (!0u64 << bit);
        if first != 0 {
            return Some(word * 64 + first.trailing_zeros() as usize);
        }
        (1..=words).find_map(|k| {
            let w = (word + k) % WORDS;
            let mut bits = self.occupied[w];
            if k == WORDS {
                bits &= (1u64 << bit).wrapping_sub(1);
            }
            (bits != 0).then(|| w * 64 + bits.trailing_zeros() as usize)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `peek` gives the next two items in the order `pop` hands them out,
    /// across milliseconds, and nothing past the end.
    #[test]
    fn peek_gives_the_next_two_items() {
        let mut queue = EventQueue::new(0, 10_000);
        queue.push(5, 'a');
        queue.push(3, 'b');
        queue.push(3, 'c');
        queue.push(70, 'd');
        assert_eq!(queue.peek(), [Some(&'b'), Some(&'c')]);
        assert_eq!(queue.pop(), Some((3, 'b')));
        assert_eq!(queue.peek(), [Some(&'c'), Some(&'a')]);
        assert_eq!(queue.pop(), Some((3, 'c')));
        assert_eq!(queue.peek(), [Some(&'a'), Some(&'d')]);
        assert_eq!(queue.pop(), Some((5, 'a')));
        assert_eq!(queue.peek(), [Some(&'d'), None]);
        assert_eq!(queue.pop(), Some((70, 'd')));
        assert_eq!(queue.peek(), [None, None]);
        assert_eq!(queue.pop(), None);
    }

    /// The queue hands items out exactly as a heap ordered by (time,
    /// sequence number) does, for random monotone pushes near and far,
    /// same-millisecond pushes while draining, items queued with a
    /// sequence number taken earlier, items taken out, and an end.
    #[test]
    fn same_order_as_a_heap_by_time_then_sequence() {
        for seed in 0..20 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let start = 1_000 + rng.u64(0..PAGE * 3);
            let end = start + rng.u64(PAGE..PAGE * PAGES * 3);
            let mut queue = EventQueue::new(start, end);
            let mut heap = BinaryHeap::new();
            let push = |q: &mut EventQueue<u64>, h: &mut BinaryHeap<Far<u64>>, at, seq| {
                q.push_seq(at, seq, seq);
                if at <= end {
                    h.push(Far { at, seq, item: seq });
                }
            };
            for k in 0..300 {
                // Far ones on a coarse grid, so that items from the heap, a
                // page and the ring meet in one millisecond.
                let at = match k % 3 {
                    0 => start + rng.u64(0..PAGE * 4),
                    1 => (start + rng.u64(0..PAGE * PAGES)).next_multiple_of(4096),
                    _ => (start + rng.u64(0..PAGE * PAGES * 4)).next_multiple_of(4096),
                };
                let seq = queue.next_seq();
                push(&mut queue, &mut heap, at, seq);
            }
            // Sequence numbers taken and not used yet.
            let mut put_off = Vec::new();
            let mut popped = 0;
            let mut removed = 0;
            let mut peeked = 0;
            loop {
                let [next, _] = queue.peek().map(|item| item.copied());
                let Some((at, item)) = queue.pop() else {
                    break;
                };
                let expected = heap.pop().expect("the heap has as many");
                assert_eq!((at, item), (expected.at, expected.item), "seed {seed}");
                if let Some(next) = next {
                    assert_eq!(next, item, "seed {seed}: peeked");
                    peeked += 1;
                }
                popped += 1;
                if popped > 20_000 {
                    continue;
                }
                for _ in 0..rng.usize(0..3) {
                    let ahead = match rng.u8(0..6) {
                        0 => 0,
                        1 => rng.u64(0..10),
                        2 => rng.u64(0..PAGE * 3),
                        3 => PAGE - 1 + rng.u64(0..3),
                        4 => rng.u64(0..PAGE * PAGES),
                        _ => PAGE * PAGES - 2 + rng.u64(0..PAGE * 2),
                    };
                    let t = at + ahead;
                    let t = if ahead > PAGE {
                        t.next_multiple_of(4096)
                    } else {
                        t
                    };
                    let seq = if !put_off.is_empty() && rng.bool() {
                        put_off.swap_remove(rng.usize(0..put_off.len()))
                    } else {
                        queue.next_seq()
                    };
                    push(&mut queue, &mut heap, t, seq);
                }
                if rng.u8(0..4) == 0 {
                    put_off.push(queue.next_seq());
                }
                // Take out a queued item near the present, as often as
                // not one the ring holds.
                if rng.u8(0..3) == 0 {
                    if let Some(pick) = heap.iter().nth(rng.usize(0..heap.len().max(1))) {
                        let (at, seq) = (pick.at, pick.seq);
                        if queue.remove(at, seq) {
                            removed += 1;
                            heap.retain(|f| (f.at, f.seq) != (at, seq));
                        } else {
                            assert!(at >= queue.spread, "seed {seed}: not removed from the ring");
                        }
                    }
                }
            }
            assert!(heap.is_empty(), "seed {seed}");
            assert!(peeked > 10, "seed {seed}: {peeked} of {popped} peeked");
            assert!(popped > 100, "seed {seed}: {popped}");
            assert!(removed > 10, "seed {seed}: {removed} removed");
            assert!(!queue.remove(end, u64::MAX), "seed {seed}");
        }
    }
}
