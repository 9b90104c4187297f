//! Sliding windows of outcomes, lock-free, O(1) to record and to read.
//!
//! - [`CountWindow`]: the last N outcomes, in a ring of one byte each. Recording takes a ticket
//!   (one `fetch_add`), and writes its slot only when the outcome differs from the one it
//!   replaces — so a healthy stream costs one atomic add per call. Running totals of failures
//!   and slow calls are adjusted by what the slot held, so reading is three loads.
//! - [`TimeWindow`]: buckets of a fixed width over a span; the bucket an outcome lands in is
//!   chosen by the clock, a bucket is emptied (and its counts taken off the running totals) when
//!   the window slides past it. After an idle gap at most every bucket is emptied once.

use crate::loom::{AtomicI64, AtomicU64, AtomicU8, Ordering};

const SUCCESS: u8 = 1;
const FAILED: u8 = 2;
const SLOW: u8 = 4;

/// One outcome as the window keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    pub(crate) failed: bool,
    pub(crate) slow: bool,
}

impl Mark {
    fn code(self) -> u8 {
        SUCCESS | if self.failed { FAILED } else { 0 } | if self.slow { SLOW } else { 0 }
    }
}

/// What a window holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Calls recorded (successes and failures; ignored calls are not recorded).
    pub calls: u64,
    /// Of those, failures.
    pub failures: u64,
    /// Of those, slow calls (failed or not).
    pub slow: u64,
}

fn clamp(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

// ===== CountWindow =====

#[derive(Debug)]
pub(crate) struct CountWindow {
    slots: Box<[AtomicU8]>,
    /// `2^64 / n`, rounded up: the index of a ticket is found with two multiplications
    /// instead of a division (Lemire's fast modulo, on the low 32 bits of the ticket).
    magic: u64,
    seq: AtomicU64,
    failures: AtomicI64,
    slow: AtomicI64,
}

impl CountWindow {
    pub(crate) fn new(n: u32) -> CountWindow {
        CountWindow {
            slots: (0..n).map(|_| AtomicU8::new(0)).collect(),
            magic: (u64::MAX / u64::from(n)).wrapping_add(1),
            seq: AtomicU64::new(0),
            failures: AtomicI64::new(0),
            slow: AtomicI64::new(0),
        }
    }

    /// `ticket mod n`, exact for the low 32 bits of the ticket. (When the ticket passes 2^32
    /// the ring's order restarts once: one slot is overwritten early, and the counts, adjusted
    /// by what each slot held, stay exact.)
    #[inline]
    fn index(&self, ticket: u64) -> usize {
        let low = self.magic.wrapping_mul(u64::from(ticket as u32));
        ((u128::from(low) * self.slots.len() as u128) >> 64) as usize
    }

    #[inline]
    pub(crate) fn record(&self, mark: Mark) {
        let code = mark.code();
        // A full window of successes stays a full window of successes whichever slot a new
        // success lands in: nothing to write, not even a ticket. This is the healthy path.
        if code == SUCCESS
            && self.failures.load(Ordering::Relaxed) == 0
            && self.slow.load(Ordering::Relaxed) == 0
            && self.seq.load(Ordering::Relaxed) >= self.slots.len() as u64
        {
            return;
        }
        let ticket = self.seq.fetch_add(1, Ordering::Relaxed);
        let slot = &self.slots[self.index(ticket)];
        // A success replacing a success writes nothing either.
        if slot.load(Ordering::Relaxed) == code {
            return;
        }
        let old = slot.swap(code, Ordering::AcqRel);
        let delta = |bit: u8| i64::from(code & bit != 0) - i64::from(old & bit != 0);
        let (df, ds) = (delta(FAILED), delta(SLOW));
        if df != 0 {
            self.failures.fetch_add(df, Ordering::AcqRel);
        }
        if ds != 0 {
            self.slow.fetch_add(ds, Ordering::AcqRel);
        }
    }

    pub(crate) fn counts(&self) -> Counts {
        Counts {
            calls: self
                .seq
                .load(Ordering::Acquire)
                .min(self.slots.len() as u64),
            failures: clamp(self.failures.load(Ordering::Acquire)),
            slow: clamp(self.slow.load(Ordering::Acquire)),
        }
    }

    /// Empties the window by taking each slot's outcome out of the totals — never by storing
    /// zeros over them, which would lose a record racing with the reset and leave the totals
    /// out of step with the slots for good.
    pub(crate) fn reset(&self) {
        self.seq.store(0, Ordering::Release);
        for slot in self.slots.iter() {
            let old = slot.swap(0, Ordering::AcqRel);
            if old & FAILED != 0 {
                self.failures.fetch_sub(1, Ordering::AcqRel);
            }
            if old & SLOW != 0 {
                self.slow.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

// ===== TimeWindow =====

/// One bucket: the outcomes of one slice of time, tagged with nothing — the window's `head`
/// says which slice each bucket holds.
#[derive(Debug, Default)]
struct Bucket {
    calls: AtomicU64,
    failures: AtomicU64,
    slow: AtomicU64,
}

impl Bucket {
    /// Empties the bucket, returning what it held.
    fn take(&self) -> (i64, i64, i64) {
        let take = |c: &AtomicU64| i64::try_from(c.swap(0, Ordering::AcqRel)).unwrap_or(i64::MAX);
        (take(&self.calls), take(&self.failures), take(&self.slow))
    }
}

#[derive(Debug)]
pub(crate) struct TimeWindow {
    width: u64,
    buckets: Box<[Bucket]>,
    /// The newest bucket index (time / width) the window has slid to, plus one (0 = never).
    head: AtomicU64,
    calls: AtomicI64,
    failures: AtomicI64,
    slow: AtomicI64,
}

impl TimeWindow {
    pub(crate) fn new(span_ns: u64, width_ns: u64) -> TimeWindow {
        let n = span_ns / width_ns;
        TimeWindow {
            width: width_ns,
            buckets: (0..n).map(|_| Bucket::default()).collect(),
            head: AtomicU64::new(0),
            calls: AtomicI64::new(0),
            failures: AtomicI64::new(0),
            slow: AtomicI64::new(0),
        }
    }

    fn subtract(&self, (c, f, s): (i64, i64, i64)) {
        if c != 0 {
            self.calls.fetch_sub(c, Ordering::AcqRel);
        }
        if f != 0 {
            self.failures.fetch_sub(f, Ordering::AcqRel);
        }
        if s != 0 {
            self.slow.fetch_sub(s, Ordering::AcqRel);
        }
    }

    /// Slides the window so that its newest bucket is the one holding `now`.
    fn slide(&self, now: u64) {
        let epoch = now / self.width + 1;
        let mut head = self.head.load(Ordering::Acquire);
        while head < epoch {
            match self
                .head
                .compare_exchange(head, epoch, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    // We own the slide from `head` to `epoch`: empty the buckets the window
                    // passes over (their contents are a whole span old).
                    let n = self.buckets.len() as u64;
                    let first = if epoch - head >= n { epoch - n } else { head };
                    for e in first..epoch {
                        self.subtract(self.buckets[(e % n) as usize].take());
                    }
                    return;
                }
                Err(actual) => head = actual,
            }
        }
    }

    pub(crate) fn record(&self, mark: Mark, now: u64) {
        self.slide(now);
        let n = self.buckets.len() as u64;
        let bucket = &self.buckets[((now / self.width) % n) as usize];
        bucket.calls.fetch_add(1, Ordering::AcqRel);
        self.calls.fetch_add(1, Ordering::AcqRel);
        if mark.failed {
            bucket.failures.fetch_add(1, Ordering::AcqRel);
            self.failures.fetch_add(1, Ordering::AcqRel);
        }
        if mark.slow {
            bucket.slow.fetch_add(1, Ordering::AcqRel);
            self.slow.fetch_add(1, Ordering::AcqRel);
        }
    }

    pub(crate) fn counts(&self, now: u64) -> Counts {
        self.slide(now);
        Counts {
            calls: clamp(self.calls.load(Ordering::Acquire)),
            failures: clamp(self.failures.load(Ordering::Acquire)),
            slow: clamp(self.slow.load(Ordering::Acquire)),
        }
    }

    /// Empties the window bucket by bucket, taking what each held off the totals.
    pub(crate) fn reset(&self) {
        for b in self.buckets.iter() {
            self.subtract(b.take());
        }
    }
}

// ===== Window =====

#[derive(Debug)]
pub(crate) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    /// Whether recording needs the time.
    pub(crate) fn needs_clock(&self) -> bool {
        matches!(self, Window::Time(_))
    }

    #[inline]
    pub(crate) fn record(&self, mark: Mark, now: u64) {
        match self {
            Window::Count(w) => w.record(mark),
            Window::Time(w) => w.record(mark, now),
        }
    }

    pub(crate) fn counts(&self, now: u64) -> Counts {
        match self {
            Window::Count(w) => w.counts(),
            Window::Time(w) => w.counts(now),
        }
    }

    /// Whether the window may hold a failure or a slow call: two loads, no sliding. `false`
    /// is exact; `true` may be stale (a time window not yet slid past them).
    #[inline]
    pub(crate) fn may_hold_bad(&self) -> bool {
        let (failures, slow) = match self {
            Window::Count(w) => (&w.failures, &w.slow),
            Window::Time(w) => (&w.failures, &w.slow),
        };
        failures.load(Ordering::Acquire) > 0 || slow.load(Ordering::Acquire) > 0
    }

    pub(crate) fn reset(&self) {
        match self {
            Window::Count(w) => w.reset(),
            Window::Time(w) => w.reset(),
        }
    }
}

#[cfg(all(test, not(palisade_loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OK: Mark = Mark {
        failed: false,
        slow: false,
    };
    const BAD: Mark = Mark {
        failed: true,
        slow: false,
    };

    #[test]
    fn fast_modulo_is_exact() {
        for n in [1u32, 2, 3, 7, 10, 100, 999, 1_000_000] {
            let w = CountWindow::new(n);
            for t in (0..10_000u64).chain((u64::from(u32::MAX) - 10_000)..=u64::from(u32::MAX)) {
                assert_eq!(w.index(t), (t % u64::from(n)) as usize, "n={n} t={t}");
            }
        }
    }

    #[test]
    fn count_window_slides() {
        let w = CountWindow::new(4);
        for _ in 0..10_000 {
            w.record(OK);
        }
        assert_eq!(
            w.counts(),
            Counts {
                calls: 4,
                failures: 0,
                slow: 0
            }
        );
        for k in 1..=4 {
            w.record(BAD);
            assert_eq!(w.counts().failures, k);
        }
        w.record(OK);
        assert_eq!(w.counts().failures, 3);
    }

    #[test]
    fn time_window_forgets_what_is_a_span_old() {
        let ms = 1_000_000;
        let w = TimeWindow::new(10 * ms, ms);
        for t in 0..10 {
            w.record(BAD, t * ms);
        }
        assert_eq!(w.counts(9 * ms).failures, 10);
        // At 10 ms the bucket of 0 ms has left the window.
        assert_eq!(w.counts(10 * ms).failures, 9);
        // After a long idle gap, nothing is left.
        assert_eq!(w.counts(1_000 * ms), Counts::default());
        w.record(OK, 1_000 * ms);
        assert_eq!(w.counts(1_000 * ms).calls, 1);
    }

    proptest! {
        /// Against the obvious model: the last N marks.
        #[test]
        fn count_window_matches_the_last_n(n in 1u32..20, marks in prop::collection::vec((any::<bool>(), any::<bool>()), 0..200)) {
            let w = CountWindow::new(n);
            let mut all = Vec::new();
            for (failed, slow) in marks {
                let m = Mark { failed, slow };
                w.record(m);
                all.push(m);
                let last = &all[all.len().saturating_sub(n as usize)..];
                let want = Counts {
                    calls: last.len() as u64,
                    failures: last.iter().filter(|m| m.failed).count() as u64,
                    slow: last.iter().filter(|m| m.slow).count() as u64,
                };
                prop_assert_eq!(w.counts(), want);
            }
        }

        /// Against the obvious model: every mark with its time, filtered by the span.
        #[test]
        fn time_window_matches_the_last_span(
            buckets in 1u64..12,
            steps in prop::collection::vec((0u64..5_000, any::<bool>()), 0..200),
        ) {
            let width = 1_000u64;
            let w = TimeWindow::new(buckets * width, width);
            let mut now = 0;
            let mut all: Vec<(u64, bool)> = Vec::new();
            for (dt, failed) in steps {
                now += dt;
                w.record(Mark { failed, slow: false }, now);
                all.push((now, failed));
                // The window holds the buckets from (now/width − buckets, now/width].
                let oldest = (now / width + 1).saturating_sub(buckets);
                let inside: Vec<_> = all.iter().filter(|(t, _)| t / width >= oldest).collect();
                let got = w.counts(now);
                prop_assert_eq!(got.calls, inside.len() as u64);
                prop_assert_eq!(got.failures, inside.iter().filter(|(_, f)| *f).count() as u64);
            }
        }
    }
}

#[cfg(all(test, not(palisade_loom)))]
mod concurrent {
    use super::*;
    use std::sync::Arc;

    /// Records racing with resets never leave the totals out of step with the slots.
    #[test]
    fn totals_match_the_slots_after_racing_resets() {
        let w = Arc::new(CountWindow::new(16));
        let threads: Vec<_> = (0..3u64)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    let mut x = t + 1;
                    for i in 0..50_000u64 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        if t == 0 && i % 97 == 0 {
                            w.reset();
                        } else {
                            w.record(Mark {
                                failed: x % 3 == 0,
                                slow: x % 5 == 0,
                            });
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let in_slots = |bit: u8| {
            w.slots
                .iter()
                .filter(|s| s.load(Ordering::SeqCst) & bit != 0)
                .count() as u64
        };
        let c = w.counts();
        assert_eq!((c.failures, c.slow), (in_slots(FAILED), in_slots(SLOW)));
    }
}
