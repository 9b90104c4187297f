//! The Generic Cell Rate Algorithm on integer nanoseconds: one `AtomicU64`, a CAS loop.
//!
//! Nothing here knows about tower or about clocks: every call takes `now` in nanoseconds since
//! the limiter's origin, so the algorithm is tested and benchmarked apart from the plumbing.
//!
//! The state is the *theoretical arrival time* (TAT): the instant at which the limiter would be
//! back to "idle". A request of `n` cells at `now` conforms when
//! `max(TAT, now) + n·T ≤ now + τ + T`, and then sets `TAT = max(TAT, now) + n·T`. A rejection
//! writes nothing.

use crate::loom::{AtomicU32, AtomicU64, Ordering};
use crate::quota::Quota;

/// The shared state of one limit.
#[derive(Debug)]
pub(crate) struct Gcra {
    tat: AtomicU64,
    /// `T`, nanoseconds per cell.
    interval: AtomicU64,
    /// `τ = (B − 1)·T`.
    tolerance: AtomicU64,
    /// Bumped by every quota change: a grant from before one is not given back.
    epoch: AtomicU32,
    /// The latest `defer` deadline: nothing (refund, quota change) brings the TAT below
    /// `defer_until + τ`.
    defer_until: AtomicU64,
}

/// The TAT while `set_quota` swaps the parameters: everyone else waits a few instructions.
const LOCKED: u64 = u64::MAX;

/// One admission, kept so that it can be given back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Grant {
    /// The TAT this admission wrote.
    tat_after: u64,
    /// How many cells it took.
    cells: u32,
    /// The quota epoch it was taken under.
    epoch: u32,
}

/// Why a request did not conform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deny {
    /// It will conform at this time (nanoseconds since the origin), if nothing else is admitted.
    Until(u64),
    /// It asks for more cells than the burst: it can never conform.
    Insufficient,
}

impl Gcra {
    pub(crate) fn new(quota: &Quota) -> Gcra {
        Gcra {
            tat: AtomicU64::new(0),
            interval: AtomicU64::new(quota.interval_ns()),
            tolerance: AtomicU64::new(quota.tolerance_ns()),
            epoch: AtomicU32::new(0),
            defer_until: AtomicU64::new(0),
        }
    }

    /// The TAT, waiting out a quota change in progress (a few instructions, unless its thread
    /// is descheduled: then this one yields).
    #[inline]
    fn load_tat(&self) -> u64 {
        let mut spins = 0u32;
        loop {
            let cur = self.tat.load(Ordering::Acquire);
            if cur != LOCKED {
                return cur;
            }
            spins += 1;
            if spins < 64 && !cfg!(palisade_loom) {
                std::hint::spin_loop();
            } else {
                crate::loom::yield_now();
            }
        }
    }

    #[inline]
    fn params(&self) -> (u64, u64) {
        (
            self.interval.load(Ordering::Acquire),
            self.tolerance.load(Ordering::Acquire),
        )
    }

    /// Admits `n` cells at `now`, charging from `base` (`base ≤ now`; equal to `now` for an
    /// ordinary request). Lock-free: a CAS loop that re-decides on conflict.
    ///
    /// No overflow: a quota keeps `B·T` and its period under 2^62 ns, so with `now` under
    /// 2^62 ns (146 years of uptime) every sum here fits.
    #[inline]
    pub(crate) fn acquire(&self, now: u64, base: u64, n: u32) -> Result<Grant, Deny> {
        debug_assert!(base <= now);
        let mut cur = self.load_tat();
        loop {
            if cur == LOCKED {
                cur = self.load_tat();
            }
            let epoch = self.epoch.load(Ordering::Acquire);
            let (t, tau) = self.params();
            // n ≤ B ⟺ (n − 1)·T ≤ τ: no division on the hot path.
            match u64::from(n.saturating_sub(1)).checked_mul(t) {
                Some(extra) if extra <= tau => {}
                _ => return Err(Deny::Insufficient),
            }
            let cost = t * u64::from(n);
            let new_tat = cur.max(base).saturating_add(cost);
            // Conforms when new_tat ≤ now + τ + T, written so that nothing can wrap.
            if new_tat.saturating_sub(now) > tau + t {
                return Err(Deny::Until(new_tat - tau - t));
            }
            match self
                .tat
                .compare_exchange_weak(cur, new_tat, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    return Ok(Grant {
                        tat_after: new_tat,
                        cells: n,
                        epoch,
                    })
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// Gives back an admission that was never used.
    ///
    /// When nothing was admitted since, the state returns exactly to what it was. Otherwise the
    /// TAT is lowered by at most the part of the admission still ahead of `now`
    /// (`tat_after − now`): never below what it would be had the admission not happened, since
    /// every later admission stacked its cost on top of this one's TAT. A grant from before a
    /// quota change is not given back (its units are gone).
    #[cfg(test)]
    pub(crate) fn refund(&self, grant: Grant, now: u64) {
        self.refund_with(grant, || now);
    }

    /// [`refund`](Self::refund) with the clock read on each attempt, after the TAT it will
    /// swap: a reading taken before, by a thread then preempted while others were admitted,
    /// would give back time those admissions already stand on (one request over the bound).
    pub(crate) fn refund_with(&self, grant: Grant, clock: impl Fn() -> u64) {
        let mut cur = self.load_tat();
        loop {
            if cur == LOCKED {
                cur = self.load_tat();
            }
            let now = clock();
            if grant.epoch != self.epoch.load(Ordering::Acquire) {
                return;
            }
            let (t, tau) = self.params();
            let cost = t * u64::from(grant.cells);
            let back = if cur == grant.tat_after {
                cost
            } else {
                cost.min(grant.tat_after.saturating_sub(now))
            };
            // A deferral still in force is not undone by a token from before it.
            let until = self.defer_until.load(Ordering::Acquire);
            let floor = if until > now {
                until.saturating_add(tau).min(cur)
            } else {
                0
            };
            let new = cur.saturating_sub(back).max(floor);
            if new == cur {
                return;
            }
            match self
                .tat
                .compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    /// The earliest time at which one cell conforms (`now` if it conforms now).
    pub(crate) fn earliest(&self, now: u64) -> u64 {
        let (_, tau) = self.params();
        self.load_tat().saturating_sub(tau).max(now)
    }

    /// Admits nothing before `until`: raises the TAT so that the earliest conforming time is
    /// at least `until` (and one cell conforms then). Never lowers it.
    pub(crate) fn defer(&self, until: u64) {
        self.defer_before(until, 0);
    }

    /// [`defer`](Self::defer) to `until − early`, for a deadline `early` nanoseconds before the
    /// origin (`until` is then 0): the floor is lowered by as much, so a deadline long past
    /// changes nothing.
    pub(crate) fn defer_before(&self, until: u64, early: u64) {
        self.defer_until.fetch_max(until, Ordering::AcqRel);
        let mut cur = self.load_tat();
        loop {
            if cur == LOCKED {
                cur = self.load_tat();
            }
            let (_, tau) = self.params();
            // Never the sentinel, however far `until` is.
            let floor = until
                .saturating_add(tau)
                .saturating_sub(early)
                .min(LOCKED - 1);
            if cur >= floor {
                return;
            }
            match self
                .tat
                .compare_exchange_weak(cur, floor, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    /// How many cells would conform at `now`, if taken at once.
    pub(crate) fn remaining(&self, now: u64) -> u32 {
        let (t, tau) = self.params();
        let tat = self.load_tat().max(now);
        let room = now.saturating_add(tau + t).saturating_sub(tat);
        u32::try_from(room / t).unwrap_or(u32::MAX)
    }

    /// The theoretical arrival time: at or before `now`, the limit is as good as new.
    pub(crate) fn tat(&self) -> u64 {
        self.load_tat()
    }

    /// The emission interval in nanoseconds.
    pub(crate) fn interval(&self) -> u64 {
        self.interval.load(Ordering::Acquire)
    }

    /// Changes the quota at `now`, keeping the debt in cells — a limiter that owed three
    /// intervals under the old quota owes three under the new one — but never more than the new
    /// burst: lowering the burst does not lock callers out for the old burst's worth.
    ///
    /// Requests decided at the same moment by other threads are judged by the old quota or the
    /// new one.
    pub(crate) fn set_quota(&self, quota: &Quota, now: u64) {
        // Freeze the TAT while the parameters change, so that no decision mixes the old TAT
        // with the new parameters (or the parameters with each other).
        let mut cur = self.load_tat();
        loop {
            match self
                .tat
                .compare_exchange_weak(cur, LOCKED, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(_) => cur = self.load_tat(),
            }
        }
        let (old_t, _) = self.params();
        let new_t = quota.interval_ns();
        let max_debt = quota.tolerance_ns() + new_t;
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.interval.store(new_t, Ordering::Release);
        self.tolerance
            .store(quota.tolerance_ns(), Ordering::Release);
        let debt = u128::from(cur.saturating_sub(now));
        let scaled = debt * u128::from(new_t) / u128::from(old_t);
        let scaled = u64::try_from(scaled).unwrap_or(u64::MAX).min(max_debt);
        // A deferral outlives the quota: nothing before `defer_until`.
        let until = self.defer_until.load(Ordering::Acquire);
        let floor = if until > now {
            until.saturating_add(quota.tolerance_ns())
        } else {
            0
        };
        let new = now.saturating_add(scaled).max(floor).min(LOCKED - 1);
        self.tat.store(new, Ordering::Release);
    }
}

#[cfg(all(test, not(palisade_loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;

    fn gcra(per_ms: u64, burst: u32) -> Gcra {
        let q = Quota::new(1, std::time::Duration::from_millis(per_ms))
            .unwrap()
            .burst(burst)
            .unwrap();
        Gcra::new(&q)
    }

    #[test]
    fn defer_admits_nothing_before_then_one_per_interval() {
        // 1 per ms, burst 3: idle, but deferred to 10 ms.
        let g = gcra(1, 3);
        g.defer(10 * MS);
        assert_eq!(
            g.acquire(10 * MS - 1, 10 * MS - 1, 1),
            Err(Deny::Until(10 * MS))
        );
        g.acquire(10 * MS, 10 * MS, 1).unwrap();
        // One at the deferred time, not a whole burst.
        assert_eq!(g.acquire(10 * MS, 10 * MS, 1), Err(Deny::Until(11 * MS)));
        // A defer to an earlier time changes nothing.
        g.defer(MS);
        assert_eq!(g.acquire(10 * MS, 10 * MS, 1), Err(Deny::Until(11 * MS)));
    }

    #[test]
    fn burst_then_one_per_interval() {
        let g = gcra(1, 3);
        for _ in 0..3 {
            g.acquire(0, 0, 1).unwrap();
        }
        assert_eq!(g.acquire(0, 0, 1), Err(Deny::Until(MS)));
        assert_eq!(g.remaining(0), 0);
        g.acquire(MS, MS, 1).unwrap();
        assert_eq!(g.acquire(MS, MS, 1), Err(Deny::Until(2 * MS)));
        // Idle long enough: the whole burst is back, and no more.
        assert_eq!(g.remaining(100 * MS), 3);
    }

    #[test]
    fn check_n_is_all_or_nothing() {
        let g = gcra(1, 5);
        assert_eq!(g.acquire(0, 0, 6), Err(Deny::Insufficient));
        g.acquire(0, 0, 4).unwrap();
        assert_eq!(g.acquire(0, 0, 2), Err(Deny::Until(MS)));
        g.acquire(0, 0, 1).unwrap();
        assert_eq!(g.remaining(0), 0);
    }

    #[test]
    fn refund_restores_exactly_when_nothing_came_after() {
        let g = gcra(1, 1);
        let grant = g.acquire(0, 0, 1).unwrap();
        g.refund(grant, 5);
        g.acquire(5, 5, 1).unwrap();
    }

    #[test]
    fn refund_after_later_admissions_never_over_credits() {
        // B = 1, T = 1 ms: admitted at 0, another at 5 ms; giving back the first at 5 ms must not
        // let a second request through at 5 ms.
        let g = gcra(1, 1);
        let first = g.acquire(0, 0, 1).unwrap();
        g.acquire(5 * MS, 5 * MS, 1).unwrap();
        g.refund(first, 5 * MS);
        assert_eq!(g.acquire(5 * MS, 5 * MS, 1), Err(Deny::Until(6 * MS)));
    }

    #[test]
    fn refund_after_later_admissions_gives_back_the_whole_token_when_it_is_ahead() {
        // T = 100 ms, B = 10: five taken, one held, one more taken; 100 ms on, the held one is
        // dropped: the five still available before it was taken are available again.
        let q = Quota::per_second(10).unwrap().burst(10).unwrap();
        let g = Gcra::new(&q);
        g.acquire(0, 0, 5).unwrap();
        let held = g.acquire(0, 0, 1).unwrap();
        g.acquire(0, 0, 1).unwrap();
        g.refund(held, 100 * MS);
        assert_eq!(g.remaining(100 * MS), 5);
    }

    #[test]
    fn a_grant_from_before_a_quota_change_is_not_given_back_in_old_units() {
        let g = Gcra::new(&Quota::per_second(1).unwrap().burst(10).unwrap());
        let held = g.acquire(0, 0, 1).unwrap();
        g.acquire(0, 0, 9).unwrap();
        g.set_quota(&Quota::per_second(100).unwrap().burst(10).unwrap(), 0);
        assert_eq!(g.remaining(0), 0);
        g.refund(held, 0);
        assert!(g.remaining(0) <= 1);
    }

    #[test]
    fn lowering_the_burst_forgives_debt_beyond_it() {
        let g = Gcra::new(&Quota::per_second(1).unwrap().burst(100).unwrap());
        g.acquire(0, 0, 100).unwrap();
        g.set_quota(&Quota::per_second(1).unwrap(), 0);
        // At most one interval away, not a hundred.
        assert_eq!(g.acquire(0, 0, 1), Err(Deny::Until(1_000 * MS)));
    }

    #[test]
    fn extreme_quotas_stay_limited() {
        let max = Quota::new(1, std::time::Duration::from_nanos(1 << 62)).unwrap();
        let g = Gcra::new(&max);
        g.acquire(0, 0, 1).unwrap();
        assert!(g.acquire(1 << 40, 1 << 40, 1).is_err());
        assert_eq!(g.remaining(1 << 40), 0);
        let big = Quota::per_hour(1).unwrap().burst(1_000_000).unwrap();
        let g = Gcra::new(&big);
        g.acquire(0, 0, 1_000_000).unwrap();
        assert!(g
            .acquire(2_100 * 1_000 * MS, 2_100 * 1_000 * MS, 1)
            .is_err());
    }

    #[test]
    fn quota_change_keeps_debt_in_cells() {
        let g = gcra(1, 1);
        for i in 0..4 {
            let _ = g.acquire(0, 0, 1).or_else(|_| g.acquire(i * MS, i * MS, 1));
        }
        // Owes 1 ms (one cell) at 3 ms; at 10 ms per cell it owes 10 ms.
        let q = Quota::new(1, std::time::Duration::from_millis(10)).unwrap();
        g.set_quota(&q, 3 * MS);
        assert_eq!(g.acquire(3 * MS, 3 * MS, 1), Err(Deny::Until(13 * MS)));
    }

    /// The obviously-correct model: replay every admission in order.
    fn model_admits(admitted: &[(u64, u32)], now: u64, n: u32, t: u64, b: u32) -> bool {
        let tau = t * u64::from(b - 1);
        let tat = admitted
            .iter()
            .fold(0u64, |tat, &(at, k)| tat.max(at) + t * u64::from(k));
        n <= b && tat.max(now) + t * u64::from(n) <= now + tau + t
    }

    proptest! {
        #[test]
        fn matches_the_replay_model_and_the_window_bound(
            t_us in 1u64..5_000,
            b in 1u32..8,
            ops in prop::collection::vec((0u64..3_000_000, 1u32..4, any::<bool>()), 1..200),
        ) {
            let t = t_us * 1_000;
            let q = Quota::new(1, std::time::Duration::from_nanos(t)).unwrap().burst(b).unwrap();
            let g = Gcra::new(&q);
            let mut now = 0u64;
            let mut admitted: Vec<(u64, u32)> = Vec::new();
            for (dt, n, give_back) in ops {
                now += dt;
                let expect = model_admits(&admitted, now, n, t, b);
                let got = g.acquire(now, now, n);
                prop_assert_eq!(got.is_ok(), expect, "now={} n={}", now, n);
                if let Ok(grant) = got {
                    if give_back {
                        // Given back at once: as if it never happened.
                        g.refund(grant, now);
                    } else {
                        admitted.push((now, n));
                    }
                }
            }
            // The documented guarantee: in any window [a_i, a_j], at most B + ⌊L/T⌋ cells.
            let cells: Vec<u64> = admitted.iter().flat_map(|&(at, k)| std::iter::repeat_n(at, k as usize)).collect();
            for i in 0..cells.len() {
                for j in i..cells.len() {
                    let len = cells[j] - cells[i];
                    prop_assert!((j - i + 1) as u64 <= u64::from(b) + len / t);
                }
            }
        }
    }
}

#[cfg(all(test, palisade_loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    #[test]
    fn concurrent_checks_admit_exactly_the_burst() {
        loom::model(|| {
            let q = Quota::per_second(1).unwrap().burst(2).unwrap();
            let g = Arc::new(Gcra::new(&q));
            let handles: Vec<_> = (0..3)
                .map(|_| {
                    let g = g.clone();
                    thread::spawn(move || g.acquire(0, 0, 1).is_ok())
                })
                .collect();
            let admitted = handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .filter(|&ok| ok)
                .count();
            assert_eq!(admitted, 2);
        });
    }

    #[test]
    fn refund_races_with_admission_without_over_credit() {
        loom::model(|| {
            let q = Quota::per_second(1).unwrap();
            let g = Arc::new(Gcra::new(&q));
            let grant = g.acquire(0, 0, 1).unwrap();
            let g2 = g.clone();
            let other = thread::spawn(move || g2.acquire(0, 0, 1).is_ok());
            g.refund(grant, 0);
            let other_ok = other.join().unwrap();
            let last_ok = g.acquire(0, 0, 1).is_ok();
            // Exactly one of the two later requests fits in the burst of 1.
            assert!(other_ok ^ last_ok, "other={other_ok} last={last_ok}");
        });
    }
}
