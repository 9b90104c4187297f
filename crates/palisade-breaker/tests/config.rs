//! Every invalid config gives its error, with a message that names the setting.

use std::time::Duration;

use palisade_breaker::Config;

fn err(b: palisade_breaker::ConfigBuilder) -> String {
    b.build().unwrap_err().to_string()
}

#[test]
fn invalid_configs_say_what_is_wrong() {
    let s = Duration::from_secs;
    let cases = [
        (
            Config::builder().count_window(0),
            "count window must hold at least 1 call",
        ),
        (
            Config::builder().count_window(2_000_000),
            "count window of 2000000 calls is too large (at most 1000000)",
        ),
        (
            Config::builder().time_window(s(10), Duration::ZERO),
            "time window bucket width must be longer than zero",
        ),
        (
            Config::builder().time_window(s(1), s(2)),
            "time window span 1s is shorter than its bucket width 2s",
        ),
        (
            Config::builder().time_window(s(10), s(3)),
            "time window span 10s is not a whole number of buckets of 3s",
        ),
        (
            Config::builder().time_window(s(7200), s(1)),
            "time window of 7200 buckets is too many (at most 3600)",
        ),
        (
            Config::builder().failure_rate(0),
            "failure rate must be 1–100 %, not 0",
        ),
        (
            Config::builder().failure_rate(101),
            "failure rate must be 1–100 %, not 101",
        ),
        (
            Config::builder().slow_calls(s(1), 0),
            "slow-call rate must be 1–100 %, not 0",
        ),
        (
            Config::builder().slow_calls(Duration::ZERO, 50),
            "slow-call threshold must be longer than zero",
        ),
        (
            Config::builder().consecutive_failures(0),
            "consecutive failures must be at least 1",
        ),
        (
            Config::builder().consecutive_failures(1 << 24),
            "consecutive failures must be at most 16777215 (the count the breaker keeps)",
        ),
        (
            Config::builder().no_failure_rate(),
            "no trip rule: set a failure rate, a slow-call rate or consecutive failures",
        ),
        (
            Config::builder().half_open_probes(0),
            "half-open needs at least 1 probe",
        ),
        (
            Config::builder().close_after(0),
            "close_after must be at least 1 successful probe",
        ),
        (
            Config::builder().max_half_open_wait(Duration::ZERO),
            "max_half_open_wait must be longer than zero",
        ),
        (
            Config::builder().open_duration(Duration::ZERO, 2, s(1)),
            "open duration must be longer than zero",
        ),
        (
            Config::builder().open_duration(s(1), 0, s(1)),
            "open duration multiplier must be at least 1",
        ),
        (
            Config::builder().open_duration(s(10), 2, s(5)),
            "open duration cap 5s is shorter than the base 10s",
        ),
        (
            Config::builder().open_duration(s(1), 2, s(400 * 24 * 3600)),
            "open duration cap is longer than a year",
        ),
        (
            Config::builder().jitter(51),
            "jitter must be 0–50 %, not 51 (more could make an opening almost nothing)",
        ),
        (
            Config::builder().count_window(10),
            "minimum_calls 20 is more than the count window holds (10): the rate rules could never apply",
        ),
        (
            Config::builder().max_half_open_wait(s(400 * 24 * 3600)),
            "max_half_open_wait is longer than a year",
        ),
        (
            Config::builder().max_probe_queue_wait(s(400 * 24 * 3600)),
            "max_probe_queue_wait is longer than a year",
        ),
        (
            Config::builder().time_window(s(400 * 24 * 3600), s(400 * 24 * 3600)),
            "time window span is longer than a year",
        ),
    ];
    for (builder, message) in cases {
        assert_eq!(
            err(builder),
            format!("invalid circuit breaker config: {message}")
        );
    }
}

#[test]
fn the_defaults_build() {
    let c = Config::builder().build().unwrap();
    assert_eq!(c, Config::default());
}

#[test]
fn the_longest_consecutive_failure_rule_builds() {
    let c = Config::builder()
        .consecutive_failures((1 << 24) - 1)
        .build()
        .unwrap();
    assert_eq!(c.consecutive_failures(), Some((1 << 24) - 1));
}
