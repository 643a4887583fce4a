//! Freshness: is an object's last successful load recent enough that this batch may skip it?
//!
//! An object carries a load [`Frequency`], a standard 5-field cron expression (the seed's
//! `Fréquence`, e.g. `"0 * * * *"`: minute, hour, day of month, month, day of week), evaluated in
//! UTC. The seed's Lastrun/Fréquence rule, made exact: the object is **fresh** at `now` iff it has
//! been loaded and its last load is at or after the most recent tick of its frequency at or before
//! `now` ([`Frequency::is_fresh`]).
//!
//! This module owns cron parsing (delegated to the `croner` crate, never hand-written) and that
//! rule. It must not read the clock (`now` is always an argument) and must not depend on the
//! state machine, the planner or any I/O.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The names of the five cron fields, in order.
pub const FIELD_NAMES: [&str; 5] = ["minute", "hour", "day of month", "month", "day of week"];

/// Aliases accepted in place of the five fields.
const NICKNAMES: [&str; 6] = [
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@hourly",
];

/// A load frequency: a parsed standard 5-field cron expression, evaluated in UTC.
///
/// Accepted: numbers, `*`, ranges `a-b`, lists `a,b`, steps `*/n` and `a-b/n`, month and weekday
/// names (`JAN`, `MON-FRI`), `L`/`W`/`#` extensions, and the aliases `@hourly`, `@daily`,
/// `@weekly`, `@monthly`, `@yearly`/`@annually`. When both day of month and day of week are
/// restricted, either one matching is enough (Vixie cron). Seconds and years are not accepted.
#[derive(Clone, PartialEq, Eq)]
pub struct Frequency {
    expr: Box<str>,
    cron: Cron,
}

/// Why a text is not a frequency. Every variant names the offending text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrequencyError {
    /// Empty or whitespace only.
    #[error("empty cron expression")]
    Empty,
    /// Not five whitespace-separated fields (nor an `@` alias).
    #[error(
        "cron expression {expr:?} has {found} field(s); expected 5 (minute hour day-of-month month day-of-week) or an alias such as @hourly"
    )]
    FieldCount {
        /// The expression as given (trimmed).
        expr: String,
        /// How many fields it has.
        found: usize,
    },
    /// An `@` alias that does not exist.
    #[error(
        "cron expression {expr:?}: unknown alias; expected one of @hourly, @daily, @weekly, @monthly, @yearly, @annually"
    )]
    UnknownAlias {
        /// The alias as given.
        expr: String,
    },
    /// One field is not valid.
    #[error("cron expression {expr:?}: invalid {field} field {token:?}: {reason}")]
    BadField {
        /// The expression as given (trimmed).
        expr: String,
        /// Which field ([`FIELD_NAMES`]).
        field: &'static str,
        /// The offending field text.
        token: String,
        /// What the cron parser said about it.
        reason: String,
    },
    /// Every field is valid on its own but the combination is not.
    #[error("cron expression {expr:?} is invalid: {reason}")]
    Invalid {
        /// The expression as given (trimmed).
        expr: String,
        /// What the cron parser said.
        reason: String,
    },
    /// Valid, but never fires (e.g. `0 0 31 2 *`, the 31st of February).
    #[error("cron expression {expr:?} never fires")]
    NeverFires {
        /// The expression as given (trimmed).
        expr: String,
    },
}

fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
}

impl Frequency {
    /// Parses a 5-field cron expression (or an `@` alias). Errors name the offending field and
    /// token. Expressions that can never fire are rejected too.
    pub fn parse(text: &str) -> Result<Self, FrequencyError> {
        let expr = text.trim();
        if expr.is_empty() {
            return Err(FrequencyError::Empty);
        }
        let fields: Vec<&str> = expr.split_whitespace().collect();
        if expr.starts_with('@') {
            if fields.len() != 1 || !NICKNAMES.iter().any(|n| n.eq_ignore_ascii_case(expr)) {
                return Err(FrequencyError::UnknownAlias {
                    expr: expr.to_string(),
                });
            }
        } else if fields.len() != 5 {
            return Err(FrequencyError::FieldCount {
                expr: expr.to_string(),
                found: fields.len(),
            });
        }
        let parser = parser();
        let cron = match parser.parse(expr) {
            Ok(cron) => cron,
            Err(whole) => return Err(blame_field(&parser, expr, &fields, &whole.to_string())),
        };
        // A 5-field pattern that fires at all fires within any 28-year window (leap days and
        // weekdays realign); croner's bounded search from a fixed instant finds out.
        let origin = Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).single();
        if let Some(origin) = origin
            && cron.find_next_occurrence(&origin, true).is_err()
        {
            return Err(FrequencyError::NeverFires {
                expr: expr.to_string(),
            });
        }
        Ok(Self {
            expr: expr.into(),
            cron,
        })
    }

    /// The expression as given (trimmed).
    pub fn as_str(&self) -> &str {
        &self.expr
    }

    /// The most recent tick at or before `now` (a tick exactly at `now` counts), or `None` if the
    /// schedule has no tick before `now` within the cron library's search range (years 1–5000).
    pub fn last_tick_at_or_before(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_previous_occurrence(&now, true).ok()
    }

    /// The first tick strictly after `t`, if any within the search range: when a fresh object
    /// becomes stale.
    pub fn next_tick_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&t, false).ok()
    }

    /// Whether an object last loaded at `last_loaded_at` is fresh at `now`: it has been loaded,
    /// and the load is at or after the most recent tick at or before `now`.
    ///
    /// - Never loaded (`None`): not fresh.
    /// - Loaded exactly at the tick: fresh (the tick is covered).
    /// - A load time after `now` (clock skew between the loader and the control plane) is after
    ///   the last tick too, so it is fresh; a batch that distrusts it forces a re-run.
    /// - No tick at or before `now` at all: any load is fresh.
    pub fn is_fresh(&self, last_loaded_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
        let Some(loaded) = last_loaded_at else {
            return false;
        };
        match self.last_tick_at_or_before(now) {
            Some(tick) => loaded >= tick,
            None => true,
        }
    }
}

/// Finds which field makes `expr` invalid by parsing each one alone (the others set to `*`).
fn blame_field(parser: &CronParser, expr: &str, fields: &[&str], whole: &str) -> FrequencyError {
    if fields.len() == 5 {
        for (i, token) in fields.iter().enumerate() {
            let mut alone = ["*"; 5];
            alone[i] = token;
            if let Err(e) = parser.parse(&alone.join(" ")) {
                return FrequencyError::BadField {
                    expr: expr.to_string(),
                    field: FIELD_NAMES[i],
                    token: (*token).to_string(),
                    reason: e.to_string(),
                };
            }
        }
    }
    FrequencyError::Invalid {
        expr: expr.to_string(),
        reason: whole.to_string(),
    }
}

impl FromStr for Frequency {
    type Err = FrequencyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Frequency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.expr)
    }
}

impl fmt::Debug for Frequency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Frequency({:?})", &*self.expr)
    }
}

impl Serialize for Frequency {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.expr)
    }
}

impl<'de> Deserialize<'de> for Frequency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn the_seed_frequency_is_hourly() {
        let f = Frequency::parse("0 * * * *").unwrap();
        assert_eq!(
            f.last_tick_at_or_before(at(2024, 5, 1, 10, 42, 7)),
            Some(at(2024, 5, 1, 10, 0, 0))
        );
        assert_eq!(
            f.next_tick_after(at(2024, 5, 1, 10, 0, 0)),
            Some(at(2024, 5, 1, 11, 0, 0))
        );
        assert_eq!(f.to_string(), "0 * * * *");
    }

    #[test]
    fn errors_name_the_bad_token() {
        let e = Frequency::parse("0 25 * * *").unwrap_err();
        assert!(
            matches!(&e, FrequencyError::BadField { field: "hour", token, .. } if token == "25"),
            "{e:?}"
        );
        assert!(e.to_string().contains("\"25\""), "{e}");
        let e = Frequency::parse("0 * * * garbage2003x").unwrap_err();
        assert!(
            matches!(&e, FrequencyError::BadField { field: "day of week", token, .. } if token == "garbage2003x"),
            "{e:?}"
        );
        assert!(matches!(
            Frequency::parse("every hour"),
            Err(FrequencyError::FieldCount { found: 2, .. })
        ));
        assert!(matches!(
            Frequency::parse("0 0 * * * *"),
            Err(FrequencyError::FieldCount { found: 6, .. })
        ));
        assert!(matches!(
            Frequency::parse("@sometimes"),
            Err(FrequencyError::UnknownAlias { .. })
        ));
        assert_eq!(Frequency::parse("  "), Err(FrequencyError::Empty));
        assert!(matches!(
            Frequency::parse("0 0 31 2 *"),
            Err(FrequencyError::NeverFires { .. })
        ));
    }

    #[test]
    fn aliases_and_names_are_accepted() {
        assert_eq!(
            Frequency::parse("@daily")
                .unwrap()
                .last_tick_at_or_before(at(2024, 5, 1, 10, 0, 0)),
            Some(at(2024, 5, 1, 0, 0, 0))
        );
        assert!(Frequency::parse("@HOURLY").is_ok());
        assert!(Frequency::parse("30 9 * * MON-FRI").is_ok());
    }

    #[test]
    fn serde_round_trips_through_the_text() {
        let f = Frequency::parse("*/15 * * * *").unwrap();
        let json = serde_json::to_string(&f).unwrap();
        assert_eq!(json, "\"*/15 * * * *\"");
        let back: Frequency = serde_json::from_str(&json).unwrap();
        assert_eq!(back, f);
        assert!(serde_json::from_str::<Frequency>("\"61 * * * *\"").is_err());
    }
}
