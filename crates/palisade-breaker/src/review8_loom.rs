//! Review 8 of ad394d1, loom: a success racing a failure in closed.
use super::*;
use loom::thread;

/// Four failures in a row, then a success and a failure at once: afterwards the run is 0
/// (success last) or 1 (failure last). The success's CAS of the run, failing because the
/// failure moved it, drops the success: the run reads 5.
#[test]
fn r8_3_a_success_racing_a_failure_ends_the_run() {
    loom::model(|| {
        let b = Breaker::new(
            Config::builder()
                .no_failure_rate()
                .consecutive_failures(10)
                .count_window(4)
                .build()
                .unwrap(),
        );
        for _ in 0..4 {
            let t = b.admit();
            b.record(t, Outcome::FAILURE, None);
        }
        let (ok, failed) = (b.admit(), b.admit());
        let b2 = b.clone();
        let h = thread::spawn(move || b2.record(ok, Outcome::Success, None));
        b.record(failed, Outcome::FAILURE, None);
        h.join().unwrap();
        let n = b.consecutive_failures();
        assert!(n <= 1, "a success ended nothing: {n} failures in a row");
    });
}
