//! `ConfigBuilder::build`: the defaults build, and every invalid setting is refused with a
//! message naming it.

use std::time::Duration;

use palisade_pool::{Config, ConfigBuilder, ConfigError};

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

#[track_caller]
fn refused(builder: ConfigBuilder, words: &[&str]) -> ConfigError {
    let e = builder.build().expect_err("the config was accepted");
    let text = e.to_string();
    assert!(
        text.starts_with("invalid pool config: "),
        "unexpected prefix: {text}"
    );
    for w in words {
        assert!(text.contains(w), "{text:?} does not mention {w:?}");
    }
    e
}

#[test]
fn the_defaults_build() {
    let c = Config::builder().build().unwrap();
    assert_eq!(c.max_connections_per_key(), 10);
    assert_eq!(c.max_connections(), 100);
    assert_eq!(c.idle_timeout(), Some(Duration::from_secs(30)));
    assert_eq!(c.max_lifetime(), None);
    assert_eq!(c.sweep_interval(), Some(Duration::from_secs(15)));
    assert_eq!(c, Config::default());
}

#[test]
fn a_full_valid_config_builds() {
    let c = Config::builder()
        .max_connections_per_key(4)
        .max_connections(16)
        .max_idle_per_key(2)
        .max_waiters(64)
        .checkout_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(1))
        .idle_timeout(Duration::from_secs(20))
        .max_lifetime(Duration::from_secs(600))
        .lifetime_jitter(Duration::from_secs(60))
        .connect_backoff(3, Duration::from_millis(100), Duration::from_secs(10))
        .sweep_interval(Duration::from_secs(5))
        .build()
        .unwrap();
    assert_eq!(c.max_connections_per_key(), 4);
    assert_eq!(c.max_connections(), 16);
    assert_eq!(c.max_lifetime(), Some(Duration::from_secs(600)));
    assert_eq!(c.sweep_interval(), Some(Duration::from_secs(5)));
}

#[test]
fn the_limits_at_their_edges_build() {
    // Per key equal to the total; one of each; a year exactly; the minimum sweep.
    Config::builder()
        .max_connections_per_key(1)
        .max_connections(1)
        .max_idle_per_key(0)
        .max_waiters(0)
        .checkout_timeout(YEAR)
        .connect_timeout(YEAR)
        .idle_timeout(YEAR)
        .max_lifetime(YEAR)
        .lifetime_jitter(Duration::ZERO)
        .connect_backoff(1, YEAR, YEAR)
        .sweep_interval(Duration::from_millis(10))
        .build()
        .unwrap();
}

#[test]
fn the_sweep_interval_follows_the_timeouts() {
    let idle = |d| {
        Config::builder()
            .idle_timeout(d)
            .build()
            .unwrap()
            .sweep_interval()
    };
    assert_eq!(idle(Duration::from_secs(4)), Some(Duration::from_secs(2)));
    // Clamped to 100 ms .. 30 s.
    assert_eq!(
        idle(Duration::from_millis(50)),
        Some(Duration::from_millis(100))
    );
    assert_eq!(
        idle(Duration::from_secs(3600)),
        Some(Duration::from_secs(30))
    );
    // The shorter of the idle timeout and the lifetime.
    let both = Config::builder()
        .idle_timeout(Duration::from_secs(30))
        .max_lifetime(Duration::from_secs(10))
        .build()
        .unwrap();
    assert_eq!(both.sweep_interval(), Some(Duration::from_secs(5)));
    // Nothing expires: nothing to sweep.
    let never = Config::builder().no_idle_timeout().build().unwrap();
    assert_eq!(never.sweep_interval(), None);
}

#[test]
fn max_idle_per_key_defaults_to_the_per_key_maximum() {
    // Lowering the per-key maximum below the default idle maximum is not an error when the
    // idle maximum was never set.
    Config::builder()
        .max_connections_per_key(2)
        .build()
        .unwrap();
}

#[test]
fn zero_connections_per_key_is_refused() {
    refused(
        Config::builder().max_connections_per_key(0),
        &["max_connections_per_key", "at least 1"],
    );
}

#[test]
fn zero_connections_in_total_is_refused() {
    refused(
        Config::builder()
            .max_connections_per_key(1)
            .max_connections(0),
        &["max_connections", "at least 1"],
    );
}

#[test]
fn more_per_key_than_in_total_is_refused() {
    refused(
        Config::builder()
            .max_connections_per_key(20)
            .max_connections(10),
        &[
            "max_connections_per_key (20)",
            "exceeds",
            "max_connections (10)",
        ],
    );
}

#[test]
fn more_idle_than_per_key_is_refused() {
    refused(
        Config::builder()
            .max_connections_per_key(2)
            .max_idle_per_key(3),
        &[
            "max_idle_per_key (3)",
            "exceeds",
            "max_connections_per_key (2)",
        ],
    );
}

#[test]
fn zero_and_over_a_year_durations_are_refused() {
    type Set = fn(ConfigBuilder, Duration) -> ConfigBuilder;
    let setters: [(&str, Set); 4] = [
        ("checkout_timeout", |b, d| b.checkout_timeout(d)),
        ("connect_timeout", |b, d| b.connect_timeout(d)),
        ("idle_timeout", |b, d| b.idle_timeout(d)),
        ("max_lifetime", |b, d| b.max_lifetime(d)),
    ];
    for (name, set) in setters {
        refused(
            set(Config::builder(), Duration::ZERO),
            &[name, "longer than zero"],
        );
        refused(
            set(Config::builder(), YEAR + Duration::from_secs(1)),
            &[name, "longer than a year"],
        );
    }
}

#[test]
fn a_jitter_not_shorter_than_the_lifetime_is_refused() {
    refused(
        Config::builder()
            .max_lifetime(Duration::from_secs(10))
            .lifetime_jitter(Duration::from_secs(10)),
        &["lifetime_jitter", "shorter than max_lifetime"],
    );
}

#[test]
fn a_jitter_without_a_lifetime_is_refused() {
    refused(
        Config::builder().lifetime_jitter(Duration::from_secs(1)),
        &["lifetime_jitter", "needs a max_lifetime"],
    );
}

#[test]
fn a_backoff_after_zero_failures_is_refused() {
    refused(
        Config::builder().connect_backoff(0, Duration::from_secs(1), Duration::from_secs(2)),
        &["connect_backoff", "`after`", "at least 1"],
    );
}

#[test]
fn a_backoff_with_bad_durations_is_refused() {
    let s = Duration::from_secs;
    refused(
        Config::builder().connect_backoff(1, Duration::ZERO, s(1)),
        &["connect_backoff base", "longer than zero"],
    );
    refused(
        Config::builder().connect_backoff(1, YEAR + s(1), YEAR + s(2)),
        &["connect_backoff base", "longer than a year"],
    );
    refused(
        Config::builder().connect_backoff(1, s(1), YEAR + s(1)),
        &["connect_backoff max", "longer than a year"],
    );
    refused(
        Config::builder().connect_backoff(1, s(2), s(1)),
        &["connect_backoff", "max (1s) is shorter than base (2s)"],
    );
}

#[test]
fn a_sweep_below_the_minimum_is_refused() {
    refused(
        Config::builder().sweep_interval(Duration::from_millis(9)),
        &["sweep_interval (9ms)", "below the minimum of 10ms"],
    );
    refused(
        Config::builder().sweep_interval(Duration::ZERO),
        &["sweep_interval", "below the minimum"],
    );
}

#[test]
fn a_sweep_over_a_year_is_refused() {
    refused(
        Config::builder().sweep_interval(YEAR + Duration::from_secs(1)),
        &["sweep_interval", "longer than a year"],
    );
}

#[test]
fn config_errors_are_errors() {
    let e = refused(Config::builder().max_connections_per_key(0), &[]);
    let boxed: palisade_pool::BoxError = Box::new(e.clone());
    assert_eq!(boxed.to_string(), e.to_string());
}
