//! Catalogue input: reads the seed's JSON catalogue (French keys: `IdObjet`, `IdObjet_Parent`,
//! `NomObjet`, `Zone`, `Fréquence`, `Lastrun`, `EtatObjet`, …) and Strata's native JSON form, and
//! normalises both into [`ObjectDef`]s.
//!
//! Every problem is reported — not just the first — each with the object's position, its id when
//! known, the field and the offending token ([`Problem`]). Graph-level checks (unknown parents,
//! cycles, layers) belong to the [`planner`](crate::planner), not here.
//!
//! Two record shapes are accepted, per record:
//! - **seed**: a record with an `IdObjet` key. Ids and parents must be numeric (the seed's ids are);
//!   every key that is not one of the seed's known keys becomes a string attribute (null values
//!   are dropped), including the seed's own `id` field (a dataset id, not the object id).
//! - **native**: `id`, `name`, `zone`, `parents`, `frequency`, `last_loaded_at`, `enabled`,
//!   `priority`, `attributes`. Ids may be any `[A-Za-z0-9._:-]` token.
//!
//! The document is a JSON array of records, or an object `{"objects": [...]}`.
//!
//! Parent fields arrive as `null`, an integer, `"1001"`, `"2001,2002, 2040"`, `"2001;2002"`, a
//! list of those, or noise like `"garbage2003x"` (rejected, naming the token). Separators are `,`,
//! `;` and whitespace; duplicate parents are merged.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use rustc_hash::FxHashMap;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::freshness::Frequency;
use crate::model::{IdError, ObjectDef, ObjectId, Zone};

/// A catalogue read from JSON, normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalogue {
    /// The objects, in document order.
    pub objects: Vec<ObjectDef>,
}

/// What is wrong with one field of one record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// The document is not JSON of the expected shape (`token` holds the parser's message).
    Malformed,
    /// A record has no id field.
    MissingId,
    /// The object's id is not an acceptable id.
    InvalidId,
    /// A parent token is not an acceptable id.
    InvalidParent,
    /// The zone is not a valid zone name, or no zone can be inferred.
    InvalidZone,
    /// The frequency is not a cron expression.
    InvalidFrequency,
    /// The last-run time is not a timestamp.
    InvalidTimestamp,
    /// A field has a value of the wrong type.
    InvalidValue,
}

/// One problem found while reading a catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Zero-based position of the record in the document (absent for document-level problems).
    pub index: Option<usize>,
    /// The record's id as written, when it has one.
    pub object_id: Option<String>,
    /// The field, as named in the document (`IdObjet_Parent`, `parents`, …).
    pub field: String,
    /// The offending token, as written.
    pub token: String,
    /// What is wrong.
    pub kind: ProblemKind,
    /// A human explanation.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.object_id, self.index) {
            (Some(id), _) => write!(f, "object {id}: ")?,
            (None, Some(i)) => write!(f, "record #{i}: ")?,
            (None, None) => {}
        }
        write!(f, "{} \"{}\": {}", self.field, self.token, self.message)
    }
}

/// A catalogue that cannot be read: every problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct CatalogueError {
    /// All problems, in document order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for CatalogueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 20;
        write!(
            f,
            "catalogue rejected: {} problem(s): ",
            self.problems.len()
        )?;
        for (i, p) in self.problems.iter().take(SHOWN).enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{p}")?;
        }
        if self.problems.len() > SHOWN {
            write!(f, "; and {} more", self.problems.len() - SHOWN)?;
        }
        Ok(())
    }
}

/// Reads a catalogue document (seed or native records, auto-detected per record).
pub fn read_catalogue(bytes: &[u8]) -> Result<Catalogue, CatalogueError> {
    let doc: Document<'_> = serde_json::from_slice(bytes).map_err(|e| CatalogueError {
        problems: vec![Problem {
            index: None,
            object_id: None,
            field: "document".into(),
            token: format!("line {} column {}", e.line(), e.column()),
            kind: ProblemKind::Malformed,
            message: format!(
                "not a JSON array of objects nor {{\"objects\": [...]}}: {}",
                e
            ),
        }],
    })?;
    let mut norm = Normaliser::default();
    let mut objects = Vec::with_capacity(doc.records.len());
    for (index, raw) in doc.records.into_iter().enumerate() {
        if let Some(obj) = norm.record(index, raw) {
            objects.push(obj);
        }
    }
    if norm.problems.is_empty() {
        Ok(Catalogue { objects })
    } else {
        Err(CatalogueError {
            problems: norm.problems,
        })
    }
}

/// Splits a parent field into canonical parent ids, or the list of rejected tokens.
///
/// `numeric_only` is true for seed records, whose ids are numbers: a token like `garbage2003x` is
/// then noise, not an id.
fn parse_parents(
    value: &ParentsValue<'_>,
    numeric_only: bool,
) -> Result<Vec<ObjectId>, Vec<String>> {
    let mut out: Vec<ObjectId> = Vec::new();
    let mut bad = Vec::new();
    collect_parents(value, numeric_only, &mut out, &mut bad);
    if bad.is_empty() { Ok(out) } else { Err(bad) }
}

/// A parent field as written (the shapes the seed uses).
#[derive(Debug, Clone, PartialEq)]
enum ParentsValue<'a> {
    /// `null` or absent.
    Null,
    /// An integer.
    Int(i128),
    /// A non-integral number (rejected).
    Float(f64),
    /// A string: one id, or ids separated by `,`, `;` or whitespace.
    Str(Cow<'a, str>),
    /// A list of the above.
    List(Vec<ParentsValue<'a>>),
    /// Anything else (rejected): a boolean or an object, as JSON text.
    Other(String),
}

fn collect_parents(
    value: &ParentsValue<'_>,
    numeric_only: bool,
    out: &mut Vec<ObjectId>,
    bad: &mut Vec<String>,
) {
    fn push(id: ObjectId, out: &mut Vec<ObjectId>) {
        if !out.contains(&id) {
            out.push(id);
        }
    }
    match value {
        ParentsValue::Null => {}
        ParentsValue::Int(n) => match u64::try_from(*n) {
            Ok(n) => push(ObjectId::from_u64(n), out),
            Err(_) => bad.push(n.to_string()),
        },
        ParentsValue::Float(x) => {
            if x.fract() == 0.0 && *x >= 0.0 && *x < 1e15 {
                push(ObjectId::from_u64(*x as u64), out);
            } else {
                bad.push(x.to_string());
            }
        }
        ParentsValue::Str(s) => {
            for token in s
                .split(|c: char| c == ',' || c == ';' || c.is_whitespace())
                .filter(|t| !t.is_empty())
            {
                if numeric_only && !token.bytes().all(|b| b.is_ascii_digit()) {
                    bad.push(token.to_string());
                    continue;
                }
                match ObjectId::parse(token) {
                    Ok(id) => push(id, out),
                    Err(_) => bad.push(token.to_string()),
                }
            }
        }
        ParentsValue::List(items) => {
            for item in items {
                collect_parents(item, numeric_only, out, bad);
            }
        }
        ParentsValue::Other(text) => bad.push(text.clone()),
    }
}

/// Parses a last-run time: RFC 3339, `YYYY-MM-DD HH:MM:SS[.fff]` or `YYYY-MM-DDTHH:MM:SS` (UTC),
/// `YYYY-MM-DD` (midnight UTC), or seconds since the epoch (milliseconds if above 10^11).
pub fn parse_timestamp(token: &str) -> Option<DateTime<Utc>> {
    let t = token.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Some(dt.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(t, fmt) {
            return Some(Utc.from_utc_datetime(&naive));
        }
    }
    if let Ok(date) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return date.and_hms_opt(0, 0, 0).map(|n| Utc.from_utc_datetime(&n));
    }
    if let Ok(n) = t.parse::<i64>() {
        return epoch_to_utc(n);
    }
    None
}

fn epoch_to_utc(n: i64) -> Option<DateTime<Utc>> {
    if n.unsigned_abs() > 100_000_000_000 {
        DateTime::from_timestamp_millis(n)
    } else {
        DateTime::from_timestamp(n, 0)
    }
}

// ---------------------------------------------------------------------------------------------
// Raw JSON records: one pass, borrowing strings from the input where possible.
// ---------------------------------------------------------------------------------------------

struct Document<'a> {
    records: Vec<RawRecord<'a>>,
}

impl<'de> Deserialize<'de> for Document<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Document<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON array of objects, or {\"objects\": [...]}")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut records = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(r) = seq.next_element()? {
                    records.push(r);
                }
                Ok(Document { records })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut records = None;
                while let Some(key) = map.next_key::<Str<'de>>()? {
                    if key.0 == "objects" {
                        records = Some(map.next_value::<Records<'de>>()?.0);
                    } else {
                        map.next_value::<de::IgnoredAny>()?;
                    }
                }
                records
                    .map(|records| Document { records })
                    .ok_or_else(|| de::Error::missing_field("objects"))
            }
        }
        d.deserialize_any(V)
    }
}

struct Records<'a>(Vec<RawRecord<'a>>);

impl<'de> Deserialize<'de> for Records<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<RawRecord<'de>>::deserialize(d).map(Records)
    }
}

/// A string borrowed from the input when it has no escapes.
struct Str<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Any JSON value, loosely: scalars kept as written so that problems can name them.
#[derive(Debug, Clone, PartialEq)]
enum Loose<'a> {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(Cow<'a, str>),
    List(Vec<Loose<'a>>),
    Map(Vec<(Cow<'a, str>, Loose<'a>)>),
}

impl<'de> Deserialize<'de> for Loose<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Loose<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Loose::Null)
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(Loose::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Loose::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Loose::Int(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Loose::Int(v.into()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Loose::Float(v))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Loose::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Loose::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Loose::Str(Cow::Owned(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Loose::List(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Str<'de>>()? {
                    entries.push((key.0, map.next_value()?));
                }
                Ok(Loose::Map(entries))
            }
        }
        d.deserialize_any(V)
    }
}

impl Loose<'_> {
    /// The value as written, for error messages and attributes (JSON text for lists and maps).
    fn text(&self) -> String {
        match self {
            Loose::Null => "null".into(),
            Loose::Bool(b) => b.to_string(),
            Loose::Int(n) => n.to_string(),
            Loose::Float(x) => x.to_string(),
            Loose::Str(s) => s.to_string(),
            Loose::List(_) | Loose::Map(_) => self.to_json().to_string(),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            Loose::Null => Value::Null,
            Loose::Bool(b) => Value::Bool(*b),
            Loose::Int(n) => i64::try_from(*n)
                .map(Value::from)
                .unwrap_or_else(|_| Value::String(n.to_string())),
            Loose::Float(x) => Value::from(*x),
            Loose::Str(s) => Value::String(s.to_string()),
            Loose::List(items) => Value::Array(items.iter().map(Loose::to_json).collect()),
            Loose::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_json()))
                    .collect(),
            ),
        }
    }

    fn as_parents(&self) -> ParentsValue<'_> {
        match self {
            Loose::Null => ParentsValue::Null,
            Loose::Int(n) => ParentsValue::Int(*n),
            Loose::Float(x) => ParentsValue::Float(*x),
            Loose::Str(s) => ParentsValue::Str(Cow::Borrowed(s)),
            Loose::List(items) => ParentsValue::List(items.iter().map(Loose::as_parents).collect()),
            other @ (Loose::Bool(_) | Loose::Map(_)) => ParentsValue::Other(other.text()),
        }
    }
}

/// The fields of one record, by meaning; `seed` is true when the record has `IdObjet`.
#[derive(Default)]
struct RawRecord<'a> {
    seed: bool,
    seed_id: Option<Loose<'a>>,
    native_id: Option<Loose<'a>>,
    parents: Option<(&'static str, Loose<'a>)>,
    name: Option<(&'static str, Loose<'a>)>,
    zone: Option<(&'static str, Loose<'a>)>,
    frequency: Option<(&'static str, Loose<'a>)>,
    last_run: Option<(&'static str, Loose<'a>)>,
    enabled: Option<(&'static str, Loose<'a>)>,
    priority: Option<Loose<'a>>,
    attributes: Option<Loose<'a>>,
    /// Keys that are none of the above, in document order.
    extra: Vec<(Cow<'a, str>, Loose<'a>)>,
}

impl<'de> Deserialize<'de> for RawRecord<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawRecord<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object record")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut r = RawRecord::default();
                while let Some(Str(key)) = map.next_key::<Str<'de>>()? {
                    let value: Loose<'de> = map.next_value()?;
                    match &*key {
                        "IdObjet" => {
                            r.seed = true;
                            r.seed_id = Some(value);
                        }
                        "id" => r.native_id = Some(value),
                        "IdObjet_Parent" => r.parents = Some(("IdObjet_Parent", value)),
                        "parents" => r.parents = Some(("parents", value)),
                        "NomObjet" => r.name = Some(("NomObjet", value)),
                        "name" => r.name = Some(("name", value)),
                        "Zone" => r.zone = Some(("Zone", value)),
                        "zone" => r.zone = Some(("zone", value)),
                        "Fréquence" | "Frequence" => r.frequency = Some(("Fréquence", value)),
                        "frequency" => r.frequency = Some(("frequency", value)),
                        "Lastrun" => r.last_run = Some(("Lastrun", value)),
                        "last_loaded_at" => r.last_run = Some(("last_loaded_at", value)),
                        "EtatObjet" => r.enabled = Some(("EtatObjet", value)),
                        "enabled" => r.enabled = Some(("enabled", value)),
                        "priority" => r.priority = Some(value),
                        "attributes" => r.attributes = Some(value),
                        _ => r.extra.push((key, value)),
                    }
                }
                Ok(r)
            }
        }
        d.deserialize_map(V)
    }
}

// ---------------------------------------------------------------------------------------------
// Normalisation: raw records → ObjectDef, collecting problems.
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Normaliser {
    problems: Vec<Problem>,
    /// Zones seen so far, so every object of a zone shares one allocation.
    zones: FxHashMap<String, Option<Zone>>,
    /// Frequencies already validated.
    frequencies: FxHashMap<String, Result<(), String>>,
}

impl Normaliser {
    fn problem(
        &mut self,
        index: usize,
        id: Option<&str>,
        field: &str,
        token: String,
        kind: ProblemKind,
        message: impl Into<String>,
    ) {
        self.problems.push(Problem {
            index: Some(index),
            object_id: id.map(str::to_owned),
            field: field.to_owned(),
            token,
            kind,
            message: message.into(),
        });
    }

    fn record(&mut self, index: usize, mut raw: RawRecord<'_>) -> Option<ObjectDef> {
        let before = self.problems.len();
        let seed = raw.seed;
        let (id_field, id_value) = if seed {
            // In the seed, `id` is a dataset id: an ordinary attribute.
            if let Some(v) = raw.native_id.take() {
                raw.extra.push((Cow::Borrowed("id"), v));
            }
            ("IdObjet", raw.seed_id.take())
        } else {
            ("id", raw.native_id.take())
        };
        let id_text = id_value.as_ref().map(Loose::text);
        let id = match &id_value {
            None | Some(Loose::Null) => {
                self.problem(
                    index,
                    None,
                    id_field,
                    String::new(),
                    ProblemKind::MissingId,
                    "record has no id",
                );
                None
            }
            Some(v) => match parse_id(v, seed) {
                Ok(id) => Some(id),
                Err(msg) => {
                    self.problem(index, None, id_field, v.text(), ProblemKind::InvalidId, msg);
                    None
                }
            },
        };
        let shown_id = id.as_ref().map(|i| i.as_str().to_owned()).or(id_text);
        let shown = shown_id.as_deref();

        let parents = match &raw.parents {
            None => Vec::new(),
            Some((field, value)) => match parse_parents(&value.as_parents(), seed) {
                Ok(p) => p,
                Err(bad) => {
                    for token in bad {
                        let msg = if seed {
                            "not a numeric object id"
                        } else {
                            "not an object id ([A-Za-z0-9._:-], at most 128 characters)"
                        };
                        self.problem(index, shown, field, token, ProblemKind::InvalidParent, msg);
                    }
                    Vec::new()
                }
            },
        };

        let name = match raw.name.take() {
            None | Some((_, Loose::Null)) => String::new(),
            Some((_, Loose::Str(s))) => s.into_owned(),
            Some((_, other)) => other.text(),
        };

        let layer_from_id = id.as_ref().and_then(ObjectId::numeric_layer);
        let zone = match raw.zone.take() {
            None | Some((_, Loose::Null)) => None,
            Some((field, Loose::Str(s))) if !s.trim().is_empty() => {
                let z = self.zone(&s);
                if z.is_none() {
                    self.problem(
                        index,
                        shown,
                        field,
                        s.into_owned(),
                        ProblemKind::InvalidZone,
                        "not a zone name ([a-z0-9_-], at most 64 characters, or a seed label like 1-Raw)",
                    );
                }
                z
            }
            Some((_, Loose::Str(_))) => None,
            Some((field, other)) => {
                self.problem(
                    index,
                    shown,
                    field,
                    other.text(),
                    ProblemKind::InvalidZone,
                    "zone must be a string",
                );
                None
            }
        };
        let zone = match zone {
            Some(z) => Some(z),
            None => {
                let inferred = layer_from_id.and_then(Zone::default_for_layer);
                if inferred.is_none() && id.is_some() && self.problems.len() == before {
                    self.problem(
                        index,
                        shown,
                        "zone",
                        String::new(),
                        ProblemKind::InvalidZone,
                        "no zone given and none can be inferred from the id (layers 1-3 map to raw, standardized, application)",
                    );
                }
                inferred
            }
        };
        let layer = layer_from_id.or_else(|| zone.as_ref().and_then(Zone::default_layer));

        let frequency = match raw.frequency.take() {
            None | Some((_, Loose::Null)) => None,
            Some((_, Loose::Str(s))) if s.trim().is_empty() => None,
            Some((field, Loose::Str(s))) => {
                let s = s.trim();
                let verdict = self
                    .frequencies
                    .entry(s.to_owned())
                    .or_insert_with(|| Frequency::parse(s).map(|_| ()).map_err(|e| e.to_string()))
                    .clone();
                match verdict {
                    Ok(()) => Some(s.to_owned()),
                    Err(msg) => {
                        self.problem(
                            index,
                            shown,
                            field,
                            s.to_owned(),
                            ProblemKind::InvalidFrequency,
                            msg,
                        );
                        None
                    }
                }
            }
            Some((field, other)) => {
                self.problem(
                    index,
                    shown,
                    field,
                    other.text(),
                    ProblemKind::InvalidFrequency,
                    "frequency must be a cron expression string",
                );
                None
            }
        };

        let last_loaded_at = match raw.last_run.take() {
            None | Some((_, Loose::Null)) => None,
            Some((_, Loose::Str(s))) if s.trim().is_empty() => None,
            Some((field, v)) => {
                let parsed = match &v {
                    Loose::Str(s) => parse_timestamp(s),
                    Loose::Int(n) => i64::try_from(*n).ok().and_then(epoch_to_utc),
                    _ => None,
                };
                if parsed.is_none() {
                    self.problem(
                        index,
                        shown,
                        field,
                        v.text(),
                        ProblemKind::InvalidTimestamp,
                        "not a timestamp (RFC 3339, YYYY-MM-DD HH:MM:SS in UTC, or epoch seconds)",
                    );
                }
                parsed
            }
        };

        let enabled = match raw.enabled.take() {
            None | Some((_, Loose::Null)) => true,
            Some((_, Loose::Bool(b))) => b,
            Some(("EtatObjet", Loose::Str(s))) => {
                let s = s.trim().to_lowercase();
                matches!(s.as_str(), "actif" | "active" | "enabled" | "")
            }
            Some((field, other)) => {
                self.problem(
                    index,
                    shown,
                    field,
                    other.text(),
                    ProblemKind::InvalidValue,
                    "enabled must be true or false",
                );
                true
            }
        };

        let priority = match raw.priority.take() {
            None | Some(Loose::Null) => 0,
            Some(Loose::Int(n)) if i32::try_from(n).is_ok() => n as i32,
            Some(other) => {
                self.problem(
                    index,
                    shown,
                    "priority",
                    other.text(),
                    ProblemKind::InvalidValue,
                    "priority must be a 32-bit integer",
                );
                0
            }
        };

        let mut attributes = BTreeMap::new();
        match raw.attributes.take() {
            None | Some(Loose::Null) => {}
            Some(Loose::Map(entries)) => {
                for (k, v) in entries {
                    if v != Loose::Null {
                        attributes.insert(k.into_owned(), v.text());
                    }
                }
            }
            Some(other) => self.problem(
                index,
                shown,
                "attributes",
                other.text(),
                ProblemKind::InvalidValue,
                "attributes must be an object of strings",
            ),
        }
        for (k, v) in raw.extra {
            if v != Loose::Null {
                attributes.insert(k.into_owned(), v.text());
            }
        }

        if self.problems.len() != before {
            return None;
        }
        Some(ObjectDef {
            id: id?,
            name,
            zone: zone?,
            layer,
            parents,
            frequency,
            last_loaded_at,
            enabled,
            priority,
            attributes,
        })
    }

    fn zone(&mut self, token: &str) -> Option<Zone> {
        if let Some(z) = self.zones.get(token) {
            return z.clone();
        }
        let z = Zone::parse(token);
        self.zones.insert(token.to_owned(), z.clone());
        z
    }
}

fn parse_id(v: &Loose<'_>, numeric_only: bool) -> Result<ObjectId, String> {
    match v {
        Loose::Int(n) => u64::try_from(*n)
            .map(ObjectId::from_u64)
            .map_err(|_| "a numeric id must not be negative".to_string()),
        Loose::Float(x) if x.fract() == 0.0 && *x >= 0.0 && *x < 1e15 => {
            Ok(ObjectId::from_u64(*x as u64))
        }
        Loose::Str(s) => {
            if numeric_only && !s.trim().bytes().all(|b| b.is_ascii_digit()) {
                return Err("a seed IdObjet must be numeric".into());
            }
            ObjectId::parse(s).map_err(|e: IdError| e.to_string())
        }
        _ => Err("an id must be a non-negative integer or a string".into()),
    }
}
