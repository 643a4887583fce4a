//! Freshness: table cases of the Lastrun/Fréquence rule, rejected expressions, and a property
//! test against a brute-force minute scan.

use chrono::{DateTime, Datelike, Duration, TimeZone, Timelike, Utc, Weekday};
use proptest::prelude::*;
use strata_core::freshness::{Frequency, FrequencyError};

fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
}

fn freq(expr: &str) -> Frequency {
    Frequency::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"))
}

/// (frequency, last_loaded_at, now, fresh?, what)
type Case = (
    &'static str,
    Option<DateTime<Utc>>,
    DateTime<Utc>,
    bool,
    &'static str,
);

#[rustfmt::skip]
fn table() -> Vec<Case> {
    let ms = Duration::milliseconds;
    let hourly = "0 * * * *";
    let daily = "30 2 * * *";
    let now = at(2024, 5, 1, 10, 42, 0);
    vec![
        (hourly, None, now, false, "never loaded"),
        (hourly, Some(at(2024, 5, 1, 10, 5, 0)), now, true, "loaded after this hour's tick"),
        (hourly, Some(at(2024, 5, 1, 9, 59, 59)), now, false, "loaded just before the tick"),
        (hourly, Some(at(2024, 5, 1, 10, 0, 0)), now, true, "loaded exactly at the tick"),
        (hourly, Some(at(2024, 5, 1, 10, 0, 0) - ms(1)), now, false, "1 ms before the tick"),
        (hourly, Some(at(2024, 5, 1, 10, 0, 0) + ms(1)), now, true, "1 ms after the tick"),
        (hourly, Some(at(2024, 5, 1, 9, 30, 0)), at(2024, 5, 1, 10, 0, 0), false, "now is a tick"),
        (hourly, Some(at(2024, 5, 1, 9, 30, 0)), at(2024, 5, 1, 10, 0, 0) - ms(1), true, "now just before a tick"),
        (hourly, Some(at(2024, 5, 1, 11, 0, 0)), now, true, "loaded in the future (clock skew)"),
        (hourly, Some(at(2020, 1, 1, 0, 0, 0)), now, false, "loaded years ago"),
        (daily, Some(at(2024, 5, 1, 2, 30, 0)), now, true, "daily: loaded at today's tick"),
        (daily, Some(at(2024, 5, 1, 2, 29, 59)), now, false, "daily: loaded just before today's tick"),
        (daily, Some(at(2024, 4, 30, 23, 0, 0)), at(2024, 5, 1, 2, 0, 0), true, "daily: before today's tick"),
        (daily, Some(at(2024, 4, 30, 2, 29, 0)), at(2024, 5, 1, 2, 0, 0), false, "daily: missed yesterday's tick"),
        ("0 0 1 * *", Some(at(2024, 4, 15, 0, 0, 0)), at(2024, 4, 30, 23, 59, 59), true, "monthly"),
        ("0 0 1 * *", Some(at(2024, 4, 15, 0, 0, 0)), at(2024, 5, 1, 0, 0, 0), false, "monthly: new month"),
        ("0 0 * * MON", Some(at(2024, 4, 29, 0, 0, 0)), at(2024, 5, 5, 23, 0, 0), true, "weekly on Monday"),
        ("0 0 29 2 *", Some(at(2024, 2, 29, 0, 0, 0)), at(2027, 6, 1, 0, 0, 0), true, "leap day: next tick in 2028"),
        ("0 0 29 2 *", Some(at(2024, 2, 28, 0, 0, 0)), at(2027, 6, 1, 0, 0, 0), false, "leap day: missed 2024"),
    ]
}

#[test]
fn freshness_table() {
    for (expr, loaded, now, fresh, what) in table() {
        assert_eq!(
            freq(expr).is_fresh(loaded, now),
            fresh,
            "{what}: {expr} {loaded:?} at {now}"
        );
    }
}

#[test]
fn last_tick_is_at_or_before_now() {
    let f = freq("*/15 * * * *");
    assert_eq!(
        f.last_tick_at_or_before(at(2024, 5, 1, 10, 44, 59)),
        Some(at(2024, 5, 1, 10, 30, 0))
    );
    assert_eq!(
        f.last_tick_at_or_before(at(2024, 5, 1, 10, 45, 0)),
        Some(at(2024, 5, 1, 10, 45, 0))
    );
    let sub_second = at(2024, 5, 1, 10, 45, 0) + Duration::nanoseconds(1);
    assert_eq!(
        f.last_tick_at_or_before(sub_second),
        Some(at(2024, 5, 1, 10, 45, 0))
    );
    let before = at(2024, 5, 1, 10, 45, 0) - Duration::nanoseconds(1);
    assert_eq!(
        f.last_tick_at_or_before(before),
        Some(at(2024, 5, 1, 10, 30, 0))
    );
    // Nothing before the cron library's lower bound: any load counts as fresh, none does not.
    let y1 = freq("0 0 1 6 *");
    let early = at(1, 1, 1, 0, 0, 0);
    assert_eq!(y1.last_tick_at_or_before(early), None);
    assert!(y1.is_fresh(Some(early), early));
    assert!(!y1.is_fresh(None, early));
}

#[test]
fn garbage_is_rejected_naming_the_token() {
    let bad_field = |expr: &str, field: &str, token: &str| match Frequency::parse(expr) {
        Err(FrequencyError::BadField {
            field: f, token: t, ..
        }) => {
            assert_eq!((f, t.as_str()), (field, token), "{expr}");
            let msg = Frequency::parse(expr).unwrap_err().to_string();
            assert!(msg.contains(&format!("{token:?}")), "{msg}");
        }
        other => panic!("{expr}: {other:?}"),
    };
    bad_field("61 * * * *", "minute", "61");
    bad_field("0 24 * * *", "hour", "24");
    bad_field("0 0 32 * *", "day of month", "32");
    bad_field("0 0 1 13 *", "month", "13");
    bad_field("0 0 * * 8", "day of week", "8");
    bad_field("*/0 * * * *", "minute", "*/0");
    bad_field("0 * x * *", "day of month", "x");
    bad_field("5-1 * * * *", "minute", "5-1");
    for expr in ["", "hourly", "0 * * *", "0 0 * * * *", "0 0 0 * * * 2024"] {
        assert!(Frequency::parse(expr).is_err(), "{expr:?} accepted");
    }
    assert!(matches!(
        Frequency::parse("0 0 30 2 *"),
        Err(FrequencyError::NeverFires { .. })
    ));
    assert!(matches!(
        Frequency::parse("@every_5m"),
        Err(FrequencyError::UnknownAlias { .. })
    ));
}

/// A pattern and an independent predicate saying whether a minute matches it.
type Pattern = (&'static str, fn(&DateTime<Utc>) -> bool);

const PATTERNS: [Pattern; 6] = [
    ("0 * * * *", |t| t.minute() == 0),
    ("*/15 * * * *", |t| t.minute() % 15 == 0),
    ("30 2 * * *", |t| t.hour() == 2 && t.minute() == 30),
    ("5,35 9-17 * * 1-5", |t| {
        matches!(t.minute(), 5 | 35)
            && (9..=17).contains(&t.hour())
            && !matches!(t.weekday(), Weekday::Sat | Weekday::Sun)
    }),
    ("0 0 * * SUN", |t| {
        t.hour() == 0 && t.minute() == 0 && t.weekday() == Weekday::Sun
    }),
    ("0 12 1,15 * *", |t| {
        t.hour() == 12 && t.minute() == 0 && matches!(t.day(), 1 | 15)
    }),
];

/// Walks back minute by minute from `now` to the first matching minute.
fn brute_last_tick(matches: fn(&DateTime<Utc>) -> bool, now: DateTime<Utc>) -> DateTime<Utc> {
    let mut t = now
        .with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .unwrap();
    for _ in 0..(40 * 24 * 60) {
        if matches(&t) {
            return t;
        }
        t -= Duration::minutes(1);
    }
    panic!("no tick within 40 days before {now}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn last_tick_matches_a_brute_force_minute_scan(
        which in 0..PATTERNS.len(),
        // 2020-01-01 .. 2030-01-01, at second precision plus some nanoseconds
        secs in 1_577_836_800i64..1_893_456_000,
        nanos in prop_oneof![Just(0u32), 0u32..1_000_000_000],
        loaded_back in -3_000_000i64..3_000_000,
    ) {
        let (expr, matches) = PATTERNS[which];
        let f = freq(expr);
        let now = DateTime::from_timestamp(secs, nanos).unwrap();
        let expected = brute_last_tick(matches, now);
        prop_assert_eq!(f.last_tick_at_or_before(now), Some(expected), "{} at {}", expr, now);
        let loaded = now - Duration::seconds(loaded_back);
        prop_assert_eq!(f.is_fresh(Some(loaded), now), loaded >= expected);
        prop_assert!(!f.is_fresh(None, now));
        // Fresh right at the tick, stale a nanosecond before it.
        prop_assert!(f.is_fresh(Some(expected), now));
        prop_assert!(!f.is_fresh(Some(expected - Duration::nanoseconds(1)), now));
    }
}
