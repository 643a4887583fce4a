//! The catalogue reader against outside bytes: arbitrary bytes, generated JSON documents whose
//! fields carry values of every type (seed and native keys, values swapped between fields), and
//! valid seed catalogues with random edits. Whatever comes in, `read_catalogue` answers a
//! catalogue or a list of named problems, and never panics (a panic fails the property). A
//! bounded run of what `fuzz/fuzz_targets/catalogue.rs` does without end.
//!
//! An accepted catalogue is canonical (ids, zones and parents read back as themselves) and reads
//! back identical from its native form; its frequencies can be evaluated at its times.

use chrono::{DateTime, Datelike, SecondsFormat, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use strata_core::catalogue::{
    Catalogue, CatalogueError, ProblemKind, parse_timestamp, read_catalogue,
};
use strata_core::freshness::Frequency;
use strata_core::synth::seed_catalogue;
use strata_core::{ObjectDef, ObjectId, Zone};

#[path = "mutate/mod.rs"]
mod mutate;

const CASES: u32 = 512;

/// Every key the reader knows, in both shapes, and a few it does not.
const KEYS: &[&str] = &[
    "IdObjet",
    "IdObjet_Parent",
    "NomObjet",
    "Zone",
    "Fréquence",
    "Frequence",
    "Lastrun",
    "EtatObjet",
    "id",
    "name",
    "zone",
    "parents",
    "frequency",
    "last_loaded_at",
    "enabled",
    "priority",
    "attributes",
    "objects",
    "",
    "x",
];

/// Strings that are almost valid for some field, or valid for another one.
const STRINGS: &[&str] = &[
    "",
    " ",
    "0",
    "007",
    "1001",
    "2001,2002, 2040",
    "2001;2002",
    "garbage2003x",
    "a.b:c-d_e",
    "1-Raw",
    "2-Standardised",
    "raw",
    "RAW",
    "zone with space",
    "0 * * * *",
    "*/5 * * * *",
    "0 0 29 2 1",
    "0 0 31 2 *",
    "59 23 L * *",
    "0 0 ? * 5#5",
    "0 0 * * 7L",
    "0 0 1W * *",
    "@daily",
    "@reboot",
    "2024-01-01 00:00:00",
    "2024-01-01T00:00:00Z",
    "2024-02-30",
    "2024-01-01 24:00:00",
    "+12345-01-01T00:00:00Z",
    "1700000000",
    "-99999999999999999",
    "9223372036854775807",
    "actif",
    "Inactif",
    "é\u{0}\u{202e}",
];

/// JSON tokens to insert into a document.
const JSON_TOKENS: &[&str] = &[
    "\"",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "null",
    "-1",
    "1e999",
    "-0",
    "18446744073709551616",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"IdObjet\":",
    "\"parents\":[",
    "{\"objects\":",
    "\u{feff}",
];

fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(STRINGS).prop_map(str::to_owned),
        any::<String>(),
        "[0-9 ,;]{0,20}",
        // cron-like: five fields of cron characters
        "[0-9*/,LW#?-]{1,6}( [0-9*/,LW#?-]{1,6}){4}",
        "[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,12})?Z?",
        "[A-Za-z0-9._:-]{120,140}",
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop::sample::select(&[0i64, 1, 2, 3, 1001, 2_000_417, -1, i32::MAX as i64 + 1][..])
            .prop_map(Value::from),
        any::<f64>().prop_map(Value::from), // NaN and infinities become null
        prop::sample::select(&[0.0, 1001.0, 1.5, 1e15, -0.0][..]).prop_map(Value::from),
        string().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..4).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
        ]
    })
}

/// A record: known keys (seed, native or mixed) with values of any type.
fn random_record() -> impl Strategy<Value = Value> {
    prop::collection::vec((prop::sample::select(KEYS), json_value()), 0..8).prop_map(|kv| {
        Value::Object(
            kv.into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect::<Map<_, _>>(),
        )
    })
}

/// A valid native record.
fn native_record() -> impl Strategy<Value = Value> {
    let id = prop_oneof!["[1-3][0-9]{0,3}", "[a-z][a-z0-9._:-]{0,8}"];
    (
        id,
        prop::sample::select(&["raw", "standardized", "application", "x_1"][..]),
        prop::collection::vec("[1-3][0-9]{0,2}", 0..3),
        prop::sample::select(&["", "0 * * * *", "@daily", "*/5 1 * * 1-5"][..]),
        prop::option::of(prop_oneof![
            "20[0-9]{2}-0[1-9]-[01][1-9] [01][0-9]:[0-5][0-9]:[0-5][0-9]",
            any::<i32>().prop_map(|n| n.to_string()),
        ]),
        any::<bool>(),
        any::<i32>(),
        prop::collection::btree_map("[a-z]{0,3}", "[a-z]{0,3}", 0..3),
    )
        .prop_map(
            |(id, zone, parents, frequency, last, enabled, priority, attributes)| {
                json!({
                    "id": id, "zone": zone, "parents": parents, "frequency": frequency,
                    "last_loaded_at": last, "enabled": enabled, "priority": priority,
                    "attributes": attributes, "name": "n",
                })
            },
        )
}

/// A valid seed record.
fn seed_record() -> impl Strategy<Value = Value> {
    (
        1u64..4000, // leading digit 1-3: a layer, hence a zone
        prop::sample::select(&["", "1001", "1001, 1002", "1001;1002 1003"][..]),
        prop::sample::select(&["1-Raw", "2-Standardized", "3-Application", ""][..]),
        prop::sample::select(&["", "0 * * * *", "0 6 * * *"][..]),
        prop::sample::select(&["", "2024-01-01 00:00:00", "2024-01-01T06:00:00"][..]),
        prop::sample::select(&["Actif", "Inactif", ""][..]),
        any::<u32>(),
    )
        .prop_map(|(id, parents, zone, frequency, last, state, dataset)| {
            json!({
                "IdObjet": id, "IdObjet_Parent": parents, "Zone": zone, "Fréquence": frequency,
                "Lastrun": last, "EtatObjet": state, "NomObjet": "n", "id": dataset, "note": null,
            })
        })
}

/// How a valid record is bent: a value replaced, two values swapped, a key dropped or renamed.
#[derive(Debug, Clone)]
enum Bend {
    Replace(prop::sample::Index, Value),
    Swap(prop::sample::Index, prop::sample::Index),
    Drop(prop::sample::Index),
    Rename(prop::sample::Index, &'static str),
}

fn bend() -> impl Strategy<Value = Bend> {
    use prop::sample::Index;
    prop_oneof![
        (any::<Index>(), json_value()).prop_map(|(i, v)| Bend::Replace(i, v)),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Bend::Swap(a, b)),
        any::<Index>().prop_map(Bend::Drop),
        (any::<Index>(), prop::sample::select(KEYS)).prop_map(|(i, k)| Bend::Rename(i, k)),
    ]
}

/// A valid record (seed or native), bent by one or two [`Bend`]s.
fn bent_record() -> impl Strategy<Value = Value> {
    let valid = prop_oneof![native_record(), seed_record()];
    (valid, prop::collection::vec(bend(), 1..3)).prop_map(|(mut record, bends)| {
        let map = record.as_object_mut().expect("records are objects");
        for b in bends {
            let keys: Vec<String> = map.keys().cloned().collect();
            if keys.is_empty() {
                break;
            }
            let key = |i: &prop::sample::Index| keys[i.index(keys.len())].clone();
            match b {
                Bend::Replace(i, v) => {
                    map.insert(key(&i), v);
                }
                Bend::Swap(a, b) => {
                    let (a, b) = (key(&a), key(&b));
                    let va = map[&a].clone();
                    let vb = std::mem::replace(map.get_mut(&b).expect("present"), va);
                    map.insert(a, vb);
                }
                Bend::Drop(i) => {
                    map.remove(&key(&i));
                }
                Bend::Rename(i, to) => {
                    let v = map.remove(&key(&i)).expect("present");
                    map.insert(to.to_owned(), v);
                }
            }
        }
        record
    })
}

fn record() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => prop_oneof![native_record(), seed_record()],
        2 => bent_record(),
        1 => random_record(),
    ]
}

/// A document: an array of records, `{"objects": [...]}`, or some other JSON value.
fn document() -> impl Strategy<Value = Value> {
    let records = prop::collection::vec(prop_oneof![8 => record(), 1 => json_value()], 0..5);
    prop_oneof![
        records.clone().prop_map(Value::Array),
        (records, json_value()).prop_map(|(r, other)| json!({"other": other, "objects": r})),
        json_value(),
    ]
}

/// Reads `bytes` and checks the answer; any panic inside fails the property.
fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
    match read_catalogue(bytes) {
        Ok(catalogue) => check_accepted(&catalogue),
        Err(e) => check_rejected(&e),
    }
}

fn check_rejected(e: &CatalogueError) -> Result<(), TestCaseError> {
    prop_assert!(
        !e.problems.is_empty(),
        "an error names at least one problem"
    );
    for p in &e.problems {
        prop_assert!(!p.message.is_empty(), "{p:?}");
        prop_assert_eq!(
            p.kind == ProblemKind::Malformed,
            p.index.is_none(),
            "{:?}",
            p
        );
    }
    prop_assert!(e.to_string().starts_with("catalogue rejected: "));
    Ok(())
}

fn check_accepted(c: &Catalogue) -> Result<(), TestCaseError> {
    let now = Utc.with_ymd_and_hms(2024, 6, 1, 12, 0, 0).unwrap();
    for o in &c.objects {
        prop_assert_eq!(&ObjectId::parse(o.id.as_str()).ok(), &Some(o.id.clone()));
        prop_assert_eq!(&Zone::parse(o.zone.as_str()), &Some(o.zone.clone()));
        prop_assert_eq!(
            o.layer,
            o.id.numeric_layer().or_else(|| o.zone.default_layer())
        );
        for (i, p) in o.parents.iter().enumerate() {
            prop_assert_eq!(&ObjectId::parse(p.as_str()).ok(), &Some(p.clone()));
            prop_assert!(
                !o.parents[..i].contains(p),
                "parents are merged: {:?}",
                o.parents
            );
        }
        if let Some(f) = &o.frequency {
            let f = Frequency::parse(f).map_err(|e| TestCaseError::fail(e.to_string()))?;
            f.is_fresh(o.last_loaded_at, now);
            if let Some(t) = o.last_loaded_at {
                f.is_fresh(Some(t), t);
            }
        }
    }
    let native = Value::Array(c.objects.iter().map(native).collect());
    let again = read_catalogue(native.to_string().as_bytes());
    prop_assert_eq!(again.as_ref(), Ok(c), "native form: {}", native);
    Ok(())
}

/// An object in the native form, every field written.
fn native(o: &ObjectDef) -> Value {
    json!({
        "id": o.id.as_str(),
        "name": o.name.as_str(),
        "zone": o.zone.as_str(),
        "parents": o.parents.iter().map(ObjectId::as_str).collect::<Vec<_>>(),
        "frequency": o.frequency.as_deref(),
        "last_loaded_at": o.last_loaded_at.map(time),
        "enabled": o.enabled,
        "priority": o.priority,
        "attributes": o
            .attributes
            .iter()
            .map(|(k, v)| (k.to_owned(), Value::from(v)))
            .collect::<Map<_, _>>(),
    })
}

/// RFC 3339 where it can say the year, epoch milliseconds (lossless for such times) elsewhere.
fn time(t: DateTime<Utc>) -> Value {
    if (0..=9999).contains(&t.year()) {
        Value::from(t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    } else {
        Value::from(t.timestamp_millis())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn arbitrary_bytes_are_read_or_rejected(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check(&bytes)?;
    }

    #[test]
    fn generated_documents_are_read_or_rejected(doc in document()) {
        check(doc.to_string().as_bytes())?;
    }

    #[test]
    fn edited_seed_catalogues_are_read_or_rejected(
        objects in 1usize..24,
        seed in any::<u64>(),
        edits in mutate::edits(JSON_TOKENS),
    ) {
        let mut bytes = seed_catalogue(objects, seed);
        mutate::apply(&mut bytes, &edits);
        check(&bytes)?;
    }

    #[test]
    fn edited_documents_are_read_or_rejected(doc in document(), edits in mutate::edits(JSON_TOKENS)) {
        let mut bytes = doc.to_string().into_bytes();
        mutate::apply(&mut bytes, &edits);
        check(&bytes)?;
    }

    #[test]
    fn timestamps_and_frequencies_parse_or_not(s in string()) {
        // A time that RFC 3339 can write reads back as itself.
        if let Some(t) = parse_timestamp(&s).filter(|t| (0..=9999).contains(&t.year())) {
            let text = t.to_rfc3339_opts(SecondsFormat::AutoSi, true);
            prop_assert_eq!(parse_timestamp(&text), Some(t));
        }
        if let Ok(f) = Frequency::parse(&s) {
            prop_assert_eq!(Frequency::parse(f.as_str()).map(|g| g.as_str().to_owned()), Ok(f.as_str().to_owned()));
        }
    }
}
