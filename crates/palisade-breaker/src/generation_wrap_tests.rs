//! The half-open bookkeeping's 32-bit generation tags (found by a review of 9c2afe5). The
//! state word's generation is 61 bits; `half_open` keeps only its low 32. It was set up for a
//! new half-open only if its tag was *older* in 32-bit wrapping order, so 2^31 transitions
//! without a half-open (resets, forced states) made the last half-open's tag look *newer* than
//! the next one: its slots were never set up and no caller ever got a probe; after exactly 2^32
//! a new half-open inherited the old one's counts. It is now set up, under the patience lock,
//! while the state word is still the opening being left.
//!
//! The generation is set directly, as 2^31 `reset()` calls would leave it (about 8 minutes of
//! them in a release build).
use super::race_support::*;

fn cfg(probes: u16, close_after: u16) -> Config {
    builder()
        .half_open_probes(probes)
        .close_after(close_after)
        .open_duration(Duration::from_secs(1), 1, Duration::from_secs(1))
        .build()
        .unwrap()
}

/// As if `n` transitions had happened while closed.
fn skip_generations_while_closed(b: &Breaker, n: u64) {
    let s = b.core.state.0.load(Ordering::SeqCst);
    assert_eq!(s & 7, CLOSED);
    let g = (s >> 3) + n;
    b.core.state.0.store(pack(g, CLOSED), Ordering::SeqCst);
    b.core.stamp.store(g, Ordering::SeqCst);
}

#[tokio::test(start_paused = true)]
async fn a_half_open_2_pow_31_generations_after_the_last_one_gets_probes() {
    let b = Breaker::new(cfg(1, 1));
    trip(&b); // 1: open
    tokio::time::advance(Duration::from_secs(1)).await;
    let t = b.admit(); // 2: half-open, slots tagged 2
    assert_eq!(t, Ticket::Probe(2));
    b.record(t, Outcome::FAILURE, None); // 3: open
    b.reset(); // 4: closed
               // The next half-open is generation 2 + 2^31: exactly half the 32-bit circle past the tag.
    skip_generations_while_closed(&b, (1 << 31) - 4);
    trip(&b);
    let mut probes = 0;
    for _ in 0..120 {
        tokio::time::advance(Duration::from_secs(1)).await;
        let t = b.admit();
        if let Ticket::Probe(_) = t {
            probes += 1;
            b.record(t, Outcome::Success, None);
            break;
        }
    }
    assert!(
        probes > 0,
        "2 minutes, a caller a second, open 1 s, patience 5 s: no probe admitted (state {}, \
         generation {}, half_open word tag {})",
        b.state(),
        b.generation(),
        b.core.half_open.load(Ordering::SeqCst) & 0xffff_ffff
    );
    assert_eq!(b.state(), State::Closed);
}

/// Exactly 2^32 generations later the tag matches: the new half-open inherits the old one's
/// slots and successes. With close_after 2 and one success left over, one probe closes it.
#[tokio::test(start_paused = true)]
async fn a_half_open_2_pow_32_generations_later_does_not_inherit_successes() {
    let b = Breaker::new(cfg(2, 2));
    trip(&b); // 1
    tokio::time::advance(Duration::from_secs(1)).await;
    let ok = b.admit(); // 2: half-open
    let hung = b.admit();
    assert_eq!((ok, hung), (Ticket::Probe(2), Ticket::Probe(2)));
    b.record(ok, Outcome::Success, None); // 1 of 2
    b.release(hung); // dropped: slots (2, taken 0, ok 1)
    b.force_open(); // 3
    b.reset(); // 4
    skip_generations_while_closed(&b, (1 << 32) - 4);
    trip(&b); // 2^32 + 1
    tokio::time::advance(Duration::from_secs(1)).await;
    let t = b.admit(); // 2^32 + 2: half-open, tag 2 again
    assert_eq!(t, Ticket::Probe((1 << 32) + 2));
    b.record(t, Outcome::Success, None);
    assert_eq!(
        b.state(),
        State::HalfOpen,
        "closed on the first success of a half-open that needs two: it inherited one from the \
         half-open 2^32 generations before"
    );
}
