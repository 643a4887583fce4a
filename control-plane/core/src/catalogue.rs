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
use std::fmt;

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use rustc_hash::FxHashMap;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use smol_str::SmolStr;

use crate::freshness::Frequency;
use crate::model::{Attributes, IdError, ObjectDef, ObjectId, Zone};

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
    /// The zone is not a valid zone name, or no zone can be inferred, or (at submission) it is
    /// not one of the control plane's configured zones.
    InvalidZone,
    /// The frequency is not a cron expression.
    InvalidFrequency,
    /// The last-run time is not a timestamp.
    InvalidTimestamp,
    /// A field has a value of the wrong type.
    InvalidValue,
    /// The object is over a size bound ([`crate::limits`]): its name, parents, attributes, or
    /// its whole size as a Ready record.
    OverLimit,
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
///
/// Records are normalised as they are parsed (one pass, no intermediate list of raw records),
/// borrowing strings from the input where the JSON has no escapes.
pub fn read_catalogue(bytes: &[u8]) -> Result<Catalogue, CatalogueError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| malformed(format!("byte {}", e.valid_up_to()), "not UTF-8 text".into()))?;
    if let Some(parallel) = read_in_parts(text) {
        return parallel;
    }
    read_sequential(text)
}

/// Reads the whole document in one pass on the calling thread.
fn read_sequential(text: &str) -> Result<Catalogue, CatalogueError> {
    let mut sink = Sink {
        norm: Normaliser::default(),
        objects: Vec::with_capacity(capacity_for(text.len())),
        index: 0,
    };
    let mut de = serde_json::Deserializer::from_str(text);
    de::DeserializeSeed::deserialize(DocSeed(&mut sink), &mut de)
        .and_then(|()| de.end())
        .map_err(|e| {
            malformed(
                format!("line {} column {}", e.line(), e.column()),
                format!("not a JSON array of objects nor {{\"objects\": [...]}}: {e}"),
            )
        })?;
    if sink.norm.problems.is_empty() {
        sink.objects.shrink_to_fit();
        Ok(Catalogue {
            objects: sink.objects,
        })
    } else {
        Err(CatalogueError {
            problems: sink.norm.problems,
        })
    }
}

/// A document-level problem: the bytes are not a catalogue at all.
fn malformed(token: String, message: String) -> CatalogueError {
    CatalogueError {
        problems: vec![Problem {
            index: None,
            object_id: None,
            field: "document".into(),
            token,
            kind: ProblemKind::Malformed,
            message,
        }],
    }
}

/// Room for the objects of a document of `len` bytes: a record takes at least 64 bytes of JSON
/// in practice, so this rarely reallocates; the unused part of a large reservation is never
/// touched and so costs address space, not memory, and is given back by `shrink_to_fit`.
fn capacity_for(len: usize) -> usize {
    len / 64
}

/// What one part of a document gave: its objects, its problems (positions within the part), and
/// how many records it held.
type PartRead = (Vec<ObjectDef>, Vec<Problem>, usize);

/// Documents at least this large are read in parts on several threads.
const PARALLEL_MIN_BYTES: usize = 8 << 20;

/// Reads a large top-level array in parts, one thread each (pure CPU work). The array is cut
/// just before a record's `{` that follows `},`; a cut that falls inside a string or a nested
/// value makes a part fail to parse, and the caller then reads the whole document in one pass
/// (which also gives exact line and column numbers for malformed JSON). `None` = not applicable
/// or failed: read sequentially.
fn read_in_parts(text: &str) -> Option<Result<Catalogue, CatalogueError>> {
    let parts = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    if parts < 2 || text.len() < PARALLEL_MIN_BYTES {
        return None;
    }
    let body = text.trim_start().strip_prefix('[')?;
    let base = text.len() - body.len();
    let mut cuts = vec![base];
    for k in 1..parts {
        let from = (base + (text.len() - base) * k / parts).max(*cuts.last()?);
        cuts.push(next_record_start(text, from)?);
    }
    cuts.push(text.len());
    let results: Vec<Option<PartRead>> = std::thread::scope(|scope| {
        let handles: Vec<_> = cuts
            .windows(2)
            .enumerate()
            .map(|(k, w)| {
                let chunk = &text[w[0]..w[1]];
                let last = k == parts - 1;
                let capacity = capacity_for(if k == 0 { text.len() } else { chunk.len() });
                scope.spawn(move || read_records(chunk, last, capacity))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().ok().flatten())
            .collect()
    });
    let mut objects: Vec<ObjectDef> = Vec::new();
    let mut problems = Vec::new();
    let mut offset = 0;
    for r in results {
        let (objs, mut probs, count) = r?;
        if offset == 0 {
            // The first part reserved room for the whole document: the others move in without
            // a reallocation.
            objects = objs;
        } else {
            objects.extend(objs);
        }
        for p in &mut probs {
            p.index = p.index.map(|i| i + offset);
        }
        problems.extend(probs);
        offset += count;
    }
    Some(if problems.is_empty() {
        objects.shrink_to_fit();
        Ok(Catalogue { objects })
    } else {
        Err(CatalogueError { problems })
    })
}

/// The position of the `{` of the first record that starts at or after `from`, found as `}`,
/// whitespace, `,`, whitespace, `{`.
fn next_record_start(text: &str, from: usize) -> Option<usize> {
    let b = text.as_bytes();
    let mut i = from;
    loop {
        i += text.get(i..)?.find('}')? + 1;
        let mut j = i;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        if j < b.len() && b[j] == b',' {
            j += 1;
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            if j < b.len() && b[j] == b'{' {
                return Some(j);
            }
        }
    }
}

/// Reads the comma-separated records of one part; the last part ends with the array's `]`.
/// `None` if the part is not such a sequence.
fn read_records(chunk: &str, last: bool, capacity: usize) -> Option<PartRead> {
    let mut norm = Normaliser::default();
    let mut objects = Vec::with_capacity(capacity);
    let mut count = 0;
    let b = chunk.as_bytes();
    let skip_ws = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    let mut i = skip_ws(0);
    let mut after_comma = false;
    loop {
        if last && i < b.len() && b[i] == b']' {
            // `[...,]` is not JSON: let the sequential reader report it.
            return (!after_comma && skip_ws(i + 1) == b.len()).then_some((
                objects,
                norm.problems,
                count,
            ));
        }
        if i >= b.len() {
            return (!last).then_some((objects, norm.problems, count));
        }
        let mut stream =
            serde_json::Deserializer::from_str(&chunk[i..]).into_iter::<RawRecord<'_>>();
        let raw = stream.next()?.ok()?;
        i += stream.byte_offset();
        if let Some(o) = norm.record(count, raw) {
            objects.push(o);
        }
        count += 1;
        i = skip_ws(i);
        after_comma = i < b.len() && b[i] == b',';
        if after_comma {
            i = skip_ws(i + 1);
        } else if !(last && i < b.len() && b[i] == b']') {
            return None;
        }
    }
}

/// Splits a parent field into canonical parent ids, or the list of rejected tokens.
///
/// `numeric_only` is true for seed records, whose ids are numbers: a token like `garbage2003x` is
/// then noise, not an id.
fn parse_parents(
    value: &ParentsValue<'_>,
    numeric_only: bool,
    scratch: &mut Vec<ObjectId>,
) -> Result<Vec<ObjectId>, Vec<String>> {
    scratch.clear();
    let mut bad = Vec::new();
    collect_parents(value, numeric_only, scratch, &mut bad);
    crate::dedup::dedup_in_order(scratch);
    // An exact-size copy: the catalogue keeps a million of these.
    if bad.is_empty() {
        Ok(scratch.to_vec())
    } else {
        Err(bad)
    }
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
    // Duplicates are removed once the whole value is read (`dedup_in_order`).
    fn push(id: ObjectId, out: &mut Vec<ObjectId>) {
        out.push(id);
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
    if let Some(dt) = fixed_timestamp(t) {
        return Some(dt);
    }
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

/// Where parsed records go: normalised at once, problems collected.
struct Sink {
    norm: Normaliser,
    objects: Vec<ObjectDef>,
    index: usize,
}

/// The document: an array of records, or `{"objects": [...]}`.
struct DocSeed<'s>(&'s mut Sink);

/// The array of records inside `{"objects": [...]}`.
struct ArraySeed<'s>(&'s mut Sink);

impl<'de> de::DeserializeSeed<'de> for DocSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> de::DeserializeSeed<'de> for ArraySeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(DocSeed(self.0))
    }
}

impl<'de> Visitor<'de> for DocSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array of objects, or {\"objects\": [...]}")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let sink = self.0;
        while let Some(raw) = seq.next_element::<RawRecord<'de>>()? {
            if let Some(o) = sink.norm.record(sink.index, raw) {
                sink.objects.push(o);
            }
            sink.index += 1;
        }
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let sink = self.0;
        let mut seen = false;
        while let Some(key) = map.next_key::<Str<'de>>()? {
            if key.0 == "objects" && !seen {
                map.next_value_seed(ArraySeed(&mut *sink))?;
                seen = true;
            } else {
                map.next_value::<de::IgnoredAny>()?;
            }
        }
        if seen {
            Ok(())
        } else {
            Err(de::Error::missing_field("objects"))
        }
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

    /// The value as an attribute: strings as they are, other values as JSON text.
    fn into_attribute(self) -> SmolStr {
        match self {
            Loose::Str(s) => SmolStr::new(&*s),
            other => SmolStr::new(other.text()),
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
    /// Attribute keys seen so far.
    keys: FxHashMap<String, SmolStr>,
    /// Reused while collecting one record's parents.
    scratch: Vec<ObjectId>,
    /// Frequencies already validated (the accepted ones shared by every object using them).
    frequencies: FxHashMap<String, Result<SmolStr, String>>,
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
            Some((field, value)) => {
                match parse_parents(&value.as_parents(), seed, &mut self.scratch) {
                    Ok(p) => p,
                    Err(bad) => {
                        for token in bad {
                            let msg = if seed {
                                "not a numeric object id"
                            } else {
                                "not an object id ([A-Za-z0-9._:-], at most 128 characters)"
                            };
                            self.problem(
                                index,
                                shown,
                                field,
                                token,
                                ProblemKind::InvalidParent,
                                msg,
                            );
                        }
                        Vec::new()
                    }
                }
            }
        };

        let name = match raw.name.take() {
            None | Some((_, Loose::Null)) => SmolStr::default(),
            Some((_, Loose::Str(s))) => SmolStr::new(&*s),
            Some((_, other)) => SmolStr::new(other.text()),
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
                let verdict = match self.frequencies.get(s) {
                    Some(v) => v.clone(),
                    None => {
                        let v = Frequency::parse(s)
                            .map(|_| SmolStr::new(s))
                            .map_err(|e| e.to_string());
                        self.frequencies.insert(s.to_owned(), v.clone());
                        v
                    }
                };
                match verdict {
                    Ok(shared) => Some(shared),
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

        let extra = raw.extra.iter().filter(|(_, v)| *v != Loose::Null).count()
            + match &raw.attributes {
                Some(Loose::Map(entries)) => entries.len(),
                _ => 0,
            };
        // Collected, then sorted once (`Attributes: FromIterator`): later fields win.
        let mut attributes: Vec<(SmolStr, SmolStr)> = Vec::with_capacity(extra);
        match raw.attributes.take() {
            None | Some(Loose::Null) => {}
            Some(Loose::Map(entries)) => {
                for (k, v) in entries {
                    if v != Loose::Null {
                        attributes.push((self.key(&k), v.into_attribute()));
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
                attributes.push((self.key(&k), v.into_attribute()));
            }
        }
        let attributes: Attributes = attributes.into_iter().collect();

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

    /// An attribute key, shared by every object that uses it.
    fn key(&mut self, key: &str) -> SmolStr {
        if let Some(k) = self.keys.get(key) {
            return k.clone();
        }
        let k = SmolStr::new(key);
        self.keys.insert(key.to_owned(), k.clone());
        k
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

/// `YYYY-MM-DD HH:MM:SS` or `YYYY-MM-DDTHH:MM:SS`, optionally with a trailing `Z`, without
/// format strings (the common case, ten times cheaper); anything else goes to the general parser.
fn fixed_timestamp(t: &str) -> Option<DateTime<Utc>> {
    let b = t.strip_suffix('Z').unwrap_or(t).as_bytes();
    if b.len() != 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b' ' || b[10] == b'T')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        b[r].iter().try_fold(0u32, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    let date = NaiveDate::from_ymd_opt(num(0..4)? as i32, num(5..7)?, num(8..10)?)?;
    let naive = date.and_hms_opt(num(11..13)?, num(14..16)?, num(17..19)?)?;
    Some(Utc.from_utc_datetime(&naive))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn big_catalogue() -> String {
        let text = String::from_utf8(crate::synth::seed_catalogue(60_000, 7)).unwrap();
        assert!(
            text.len() >= PARALLEL_MIN_BYTES,
            "big enough to be read in parts"
        );
        text
    }

    #[test]
    fn reading_in_parts_gives_what_one_pass_gives() {
        let text = big_catalogue();
        let parts = read_in_parts(&text).expect("read in parts").unwrap();
        let whole = read_sequential(&text).unwrap();
        assert_eq!(parts.objects.len(), 60_000);
        assert_eq!(parts, whole);
    }

    #[test]
    fn problems_found_in_a_later_part_keep_their_document_position() {
        let text = big_catalogue();
        // Break one record three quarters of the way in.
        let at = text.len() * 3 / 4;
        let pos = at + text[at..].find("\"IdObjet\":").unwrap();
        let mut broken = text.clone();
        broken.replace_range(pos..pos + "\"IdObjet\":".len(), "\"IdObjet\":\"x1\",\"_\":");
        let parts = read_in_parts(&broken).expect("read in parts").unwrap_err();
        let whole = read_sequential(&broken).unwrap_err();
        assert_eq!(parts, whole);
        assert_eq!(parts.problems.len(), 1);
        assert!(parts.problems[0].index.unwrap() > 40_000, "{parts}");
    }

    #[test]
    fn a_cut_that_cannot_be_read_falls_back_to_one_pass() {
        let mut text = big_catalogue();
        text.insert(text.len() - 1, ',');
        assert!(
            read_in_parts(&text).is_none(),
            "a trailing comma is not JSON"
        );
        let err = read_catalogue(text.as_bytes()).unwrap_err();
        assert_eq!(err.problems[0].kind, ProblemKind::Malformed);
    }
}
