//! Bad input: every invalid quota yields its error, with a message a person can act on.

use std::time::Duration;

use palisade_ratelimit::{Quota, QuotaError};

fn parse_err(s: &str) -> String {
    s.parse::<Quota>().unwrap_err().to_string()
}

#[test]
fn invalid_strings_say_what_is_wrong() {
    const HINT: &str = "(expected e.g. \"100/min\", \"10/s\", \"5000/h\", \"3/250ms\")";
    let cases = [
        ("", "missing '/' between count and period"),
        ("100", "missing '/' between count and period"),
        ("/s", "missing request count before '/'"),
        ("ten/s", "the request count must be a whole number"),
        ("-1/s", "the request count must be a whole number"),
        ("1.5/s", "the request count must be a whole number"),
        ("100/", "missing period unit after '/'"),
        (
            "100/fortnight",
            "unknown period unit (use ns, us, ms, s, min, h or d)",
        ),
        ("100/5", "missing period unit after '/'"),
        ("99999999999999999999/s", "the request count is too large"),
        ("1/99999999999999999999s", "the period is too large"),
    ];
    for (input, reason) in cases {
        assert_eq!(
            parse_err(input),
            format!("invalid quota {input:?}: {reason} {HINT}")
        );
    }
}

#[test]
fn zero_and_overflow_are_errors_not_panics() {
    assert_eq!(
        parse_err("0/s"),
        "invalid quota: the request count must be at least 1"
    );
    assert_eq!(
        parse_err("5/0s"),
        "invalid quota: the period must be longer than zero"
    );
    assert_eq!(
        parse_err("2000000000/s"),
        "invalid quota: 2000000000 per 1s is more than one request per nanosecond"
    );
    assert_eq!(
        parse_err("1/999999999d"),
        "invalid quota: the period is too large (limit: 2^62 ns, about 146 years)"
    );
    // The bound is 2^62 ns (about 53,375 days), for periods and for burst × interval.
    assert!("1/53375d".parse::<Quota>().is_ok());
    assert_eq!(
        parse_err("1/53376d"),
        "invalid quota: the period is too large (limit: 2^62 ns, about 146 years)"
    );
    assert_eq!(
        Quota::per_hour(1)
            .unwrap()
            .burst(1_300_000)
            .unwrap_err()
            .to_string(),
        "invalid quota: burst × interval is too large (limit: 2^62 ns, about 146 years)"
    );
    assert_eq!(Quota::per_second(0), Err(QuotaError::ZeroCount));
    assert_eq!(Quota::new(1, Duration::ZERO), Err(QuotaError::ZeroPeriod));
    assert_eq!(
        Quota::new(1, Duration::MAX).unwrap_err().to_string(),
        "invalid quota: the period is too large (limit: 2^62 ns, about 146 years)"
    );
    let q = Quota::per_second(1).unwrap();
    assert_eq!(
        q.burst(0).unwrap_err().to_string(),
        "invalid quota: the burst must be at least 1"
    );
    assert_eq!(
        Quota::per_hour(1)
            .unwrap()
            .burst(u32::MAX)
            .unwrap_err()
            .to_string(),
        "invalid quota: burst × interval is too large (limit: 2^62 ns, about 146 years)"
    );
}

#[test]
fn display_names_rate_and_burst() {
    let q = Quota::per_minute(100).unwrap().burst(10).unwrap();
    assert_eq!(q.to_string(), "100/min burst 10");
    assert_eq!("3/250ms".parse::<Quota>().unwrap().to_string(), "3/250ms");
}
