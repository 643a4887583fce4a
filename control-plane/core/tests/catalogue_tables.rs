//! Catalogue input, table by table: every parent form, ids, zones, layers, timestamps, the
//! project's sample catalogues, and the seed's own files.

use std::path::PathBuf;

use strata_core::catalogue::{ProblemKind, read_catalogue};
use strata_core::planner::{PlanError, PlanRequest, Violation, plan};
use strata_core::{ObjectDef, ObjectId};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn sample(name: &str) -> Vec<u8> {
    std::fs::read(repo_root().join("clients/samples").join(name)).expect("sample catalogue")
}

fn ids(list: &[ObjectId]) -> Vec<&str> {
    list.iter().map(ObjectId::as_str).collect()
}

/// One seed-format record with the given parent field (as JSON text).
fn seed_with_parents(parents_json: &str) -> String {
    format!(
        r#"[{{"IdObjet": 3000, "IdObjet_Parent": {parents_json}, "NomObjet": "X", "Zone": "3-Application"}}]"#
    )
}

fn one(doc: &str) -> ObjectDef {
    let mut c = read_catalogue(doc.as_bytes()).unwrap_or_else(|e| panic!("{doc}: {e}"));
    assert_eq!(c.objects.len(), 1);
    c.objects.remove(0)
}

#[test]
fn seed_parent_forms_normalise() {
    let table: &[(&str, &[&str])] = &[
        ("null", &[]),
        ("1001", &["1001"]),
        ("\"1001\"", &["1001"]),
        ("\"01001\"", &["1001"]),
        ("\"\"", &[]),
        ("\"2001,2002, 2040\"", &["2001", "2002", "2040"]),
        ("\"2001;2002\"", &["2001", "2002"]),
        ("\" 2001 ; 2002 ,2003 \"", &["2001", "2002", "2003"]),
        ("\"2001 2002\"", &["2001", "2002"]),
        (
            "[2001, \"2002\", \"2003,2004\"]",
            &["2001", "2002", "2003", "2004"],
        ),
        ("[]", &[]),
        ("\"2006,2001,2006,2001\"", &["2006", "2001"]),
        ("2001.0", &["2001"]),
    ];
    for (input, expected) in table {
        let obj = one(&seed_with_parents(input));
        assert_eq!(ids(&obj.parents), *expected, "parents {input}");
    }
}

#[test]
fn a_parent_list_of_a_million_tokens_reads_in_linear_time_to_its_distinct_ids() {
    // 1,000,000 tokens over 1,000 distinct ids (a 5 MB field): de-duplication by rescanning the
    // list would take ~10^9 comparisons per record; nextest's timeout is the backstop.
    let tokens: Vec<String> = (0..1_000_000)
        .map(|i| (2000 + i % 1000).to_string())
        .collect();
    let obj = one(&seed_with_parents(&format!("\"{}\"", tokens.join(","))));
    let expected: Vec<String> = (2000..3000).map(|i| i.to_string()).collect();
    assert_eq!(ids(&obj.parents), expected);
}

#[test]
fn seed_parent_noise_is_rejected_naming_every_token() {
    let table: &[(&str, &[&str])] = &[
        ("\"garbage2003x\"", &["garbage2003x"]),
        ("\"2001,garbage2003x, 20x2\"", &["garbage2003x", "20x2"]),
        ("-5", &["-5"]),
        ("2001.5", &["2001.5"]),
        ("true", &["true"]),
        ("{\"a\": 1}", &["{\"a\":1}"]),
        ("[2001, \"abc\", false]", &["abc", "false"]),
        ("\"2001|2002\"", &["2001|2002"]),
    ];
    for (input, tokens) in table {
        let err = read_catalogue(seed_with_parents(input).as_bytes())
            .expect_err(&format!("{input} must be rejected"));
        let got: Vec<&str> = err.problems.iter().map(|p| p.token.as_str()).collect();
        assert_eq!(got, *tokens, "parents {input}");
        for p in &err.problems {
            assert_eq!(p.kind, ProblemKind::InvalidParent);
            assert_eq!(p.object_id.as_deref(), Some("3000"));
            assert_eq!(p.field, "IdObjet_Parent");
        }
        for token in *tokens {
            assert!(
                err.to_string().contains(token),
                "message names {token}: {err}"
            );
        }
    }
}

#[test]
fn native_records_accept_textual_ids() {
    let doc = r#"{"objects": [
        {"id": "orders.raw", "zone": "raw", "parents": null},
        {"id": "orders.std", "zone": "standardized", "parents": ["orders.raw"], "priority": 5,
         "enabled": false, "attributes": {"owner": "sales", "rows": 10}},
        {"id": "03001", "zone": "application", "parents": "orders.std"}
    ]}"#;
    let c = read_catalogue(doc.as_bytes()).unwrap();
    let o = &c.objects;
    assert_eq!(o[0].id.as_str(), "orders.raw");
    assert_eq!(o[0].layer, Some(1), "default zone gives the layer");
    assert_eq!(ids(&o[1].parents), ["orders.raw"]);
    assert_eq!(o[1].priority, 5);
    assert!(!o[1].enabled);
    assert_eq!(o[1].attributes.get("owner"), Some("sales"));
    assert_eq!(o[1].attributes.get("rows"), Some("10"));
    assert_eq!(o[2].id.as_str(), "3001");
    assert_eq!(o[2].layer, Some(3));
}

#[test]
fn ids_zones_and_layers() {
    // Explicit zone wins over the layer's default zone; the layer still comes from the id.
    let o = one(r#"[{"IdObjet": "02001", "Zone": "eu-batch"}]"#);
    assert_eq!(o.id.as_str(), "2001");
    assert_eq!(o.zone.as_str(), "eu-batch");
    assert_eq!(o.layer, Some(2));
    // No zone: inferred from the layer.
    let o = one(r#"[{"IdObjet": 1005}]"#);
    assert_eq!(o.zone.as_str(), "raw");
    let o = one(r#"[{"IdObjet": 3005, "Zone": null}]"#);
    assert_eq!(o.zone.as_str(), "application");
}

#[test]
fn bad_ids_zones_frequencies_and_timestamps_are_named() {
    let cases: &[(&str, ProblemKind, &str, &str)] = &[
        (
            r#"[{"IdObjet": "12ab"}]"#,
            ProblemKind::InvalidId,
            "IdObjet",
            "12ab",
        ),
        (
            r#"[{"IdObjet": -3}]"#,
            ProblemKind::InvalidId,
            "IdObjet",
            "-3",
        ),
        (
            r#"[{"NomObjet": "no id"}]"#,
            ProblemKind::MissingId,
            "id",
            "",
        ),
        (
            r#"[{"id": "a b", "zone": "raw"}]"#,
            ProblemKind::InvalidId,
            "id",
            "a b",
        ),
        (
            r#"[{"IdObjet": 1001, "Zone": "Raw Zone!"}]"#,
            ProblemKind::InvalidZone,
            "Zone",
            "Raw Zone!",
        ),
        (
            r#"[{"IdObjet": 9001}]"#,
            ProblemKind::InvalidZone,
            "zone",
            "",
        ),
        (
            r#"[{"id": "x", "zone": 7}]"#,
            ProblemKind::InvalidZone,
            "zone",
            "7",
        ),
        (
            r#"[{"IdObjet": 1001, "Fréquence": "every hour"}]"#,
            ProblemKind::InvalidFrequency,
            "Fréquence",
            "every hour",
        ),
        (
            r#"[{"IdObjet": 1001, "Lastrun": "yesterday"}]"#,
            ProblemKind::InvalidTimestamp,
            "Lastrun",
            "yesterday",
        ),
        (
            r#"[{"id": "x", "zone": "raw", "priority": "high"}]"#,
            ProblemKind::InvalidValue,
            "priority",
            "high",
        ),
        (
            r#"[{"id": "x", "zone": "raw", "enabled": "maybe"}]"#,
            ProblemKind::InvalidValue,
            "enabled",
            "maybe",
        ),
    ];
    for (doc, kind, field, token) in cases {
        let err = read_catalogue(doc.as_bytes()).expect_err(doc);
        assert_eq!(err.problems.len(), 1, "{doc}: {err}");
        let p = &err.problems[0];
        assert_eq!(&p.kind, kind, "{doc}");
        assert_eq!(p.field, *field, "{doc}");
        assert_eq!(p.token, *token, "{doc}");
    }
}

#[test]
fn every_problem_of_a_document_is_reported() {
    let doc = r#"[
        {"IdObjet": 1001, "Fréquence": "nope"},
        {"IdObjet": 2001, "IdObjet_Parent": "1001,bad"},
        {"IdObjet": 3001, "Lastrun": "later", "Zone": "?"}
    ]"#;
    let err = read_catalogue(doc.as_bytes()).unwrap_err();
    let got: Vec<(Option<usize>, &str)> = err
        .problems
        .iter()
        .map(|p| (p.index, p.token.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (Some(0), "nope"),
            (Some(1), "bad"),
            (Some(2), "?"),
            (Some(2), "later")
        ]
    );
}

#[test]
fn malformed_json_says_where() {
    let err = read_catalogue(b"[{\"IdObjet\": 1001,,}]").unwrap_err();
    assert_eq!(err.problems[0].kind, ProblemKind::Malformed);
    assert!(err.problems[0].token.contains("line 1"), "{err}");
    let err = read_catalogue(b"{\"things\": []}").unwrap_err();
    assert!(err.to_string().contains("objects"), "{err}");
    let err = read_catalogue(b"42").unwrap_err();
    assert_eq!(err.problems[0].kind, ProblemKind::Malformed);
}

#[test]
fn timestamps_in_every_accepted_form() {
    for (token, millis) in [
        ("\"2026-11-28T10:00:00Z\"", 1_795_860_000_000),
        ("\"2026-11-28T11:00:00+01:00\"", 1_795_860_000_000),
        ("\"2026-11-28 10:00:00\"", 1_795_860_000_000),
        ("\"2026-11-28 10:00:00.250\"", 1_795_860_000_250),
        ("\"2026-11-28\"", 1_795_824_000_000),
        ("1795860000", 1_795_860_000_000),
        ("1795860000000", 1_795_860_000_000),
    ] {
        let o = one(&format!(r#"[{{"IdObjet": 1001, "Lastrun": {token}}}]"#));
        assert_eq!(
            o.last_loaded_at.map(|t| t.timestamp_millis()),
            Some(millis),
            "Lastrun {token}"
        );
    }
}

#[test]
fn seed_extra_fields_become_attributes_and_etat_objet_maps_to_enabled() {
    let o = one(
        r#"[{"IdObjet": 1001, "id": "3", "URL": "https:\/\/x.example\/a", "FileLimit": 200.0,
            "Scope": null, "EtatObjet": "inactif", "Criticité": "low"}]"#,
    );
    assert_eq!(
        o.attributes.get("id"),
        Some("3"),
        "the seed's id is a dataset id, kept as attribute"
    );
    assert_eq!(o.attributes.get("URL"), Some("https://x.example/a"));
    assert_eq!(o.attributes.get("FileLimit"), Some("200"));
    assert_eq!(o.attributes.get("Criticité"), Some("low"));
    assert!(!o.attributes.contains_key("Scope"), "nulls are dropped");
    assert!(!o.enabled);
}

#[test]
fn the_complete_sample_loads_and_plans() {
    let c = read_catalogue(&sample("catalogue.json")).unwrap();
    assert_eq!(c.objects.len(), 11);
    let p = plan(&c.objects, &PlanRequest::default()).unwrap();
    assert_eq!(
        p.len(),
        11,
        "the application objects need every other object"
    );
    assert_eq!(p.wave_count, 3);
    let zones: Vec<(String, u32)> = p
        .zone_counts
        .iter()
        .map(|(z, n)| (z.to_string(), *n))
        .collect();
    assert_eq!(
        zones,
        [
            ("application".to_string(), 3),
            ("raw".to_string(), 4),
            ("standardized".to_string(), 4)
        ]
    );
    let strata_id = |n: u32| p.object(&c.objects, n).id.to_string();
    let targets: Vec<String> = p.targets.iter().map(|&n| strata_id(n)).collect();
    assert_eq!(targets.len(), 3);
    assert!(targets.iter().all(|t| t.starts_with('3')), "{targets:?}");
}

#[test]
fn the_unknown_parents_sample_is_rejected_with_them_unless_external() {
    let c = read_catalogue(&sample("catalogue_unknown_parents.json")).unwrap();
    let err = plan(&c.objects, &PlanRequest::default()).unwrap_err();
    assert_eq!(
        ids(&err.unknown_parents()),
        ["2011", "2017", "2023", "2031"]
    );
    assert!(matches!(&err, PlanError::Invalid { violations }
        if violations.iter().all(|v| matches!(v, Violation::UnknownParent { id, .. } if id.as_str() == "3002"))));
    let msg = err.to_string();
    for id in ["2011", "2017", "2023", "2031"] {
        assert!(msg.contains(id), "{msg}");
    }
    let req = PlanRequest {
        allow_external_parents: true,
        ..PlanRequest::default()
    };
    let p = plan(&c.objects, &req).unwrap();
    assert_eq!(p.len(), 3);
    assert_eq!(ids(&p.external_parents), ["2011", "2017", "2023", "2031"]);
}

/// The seed's own files load as they are. They stay out of the repository, so this test is run
/// on request, naming their folder: `STRATA_SEED_DIR=<folder> cargo test -p strata-core --test
/// catalogue_tables -- --ignored`. The samples in `clients/samples` cover the same shapes in
/// every run.
#[test]
#[ignore = "reads the seed's files, which are outside the repository: set STRATA_SEED_DIR"]
fn the_seed_files_give_the_documented_outcome() {
    let dir = std::env::var_os("STRATA_SEED_DIR")
        .map(PathBuf::from)
        .expect("STRATA_SEED_DIR names the folder of the seed's catalogues");
    let read = |name: &str| {
        std::fs::read(dir.join(name)).unwrap_or_else(|e| {
            panic!(
                "seed file {} not readable ({e}); set STRATA_SEED_DIR to the seed folder",
                dir.join(name).display()
            )
        })
    };
    let complete = read_catalogue(&read("objects_complete.json")).unwrap();
    assert_eq!(complete.objects.len(), 9);
    let p = plan(&complete.objects, &PlanRequest::default()).unwrap();
    assert_eq!(p.len(), 9);
    assert_eq!(p.wave_count, 3);

    let partial = read_catalogue(&read("objects.json")).unwrap();
    assert_eq!(partial.objects.len(), 3);
    let err = plan(&partial.objects, &PlanRequest::default()).unwrap_err();
    let unknown = err.unknown_parents();
    // 3000 names 44 parent tokens, 41 distinct; only 2005 exists.
    assert_eq!(unknown.len(), 40, "{unknown:?}");
    assert!(!unknown.iter().any(|u| u.as_str() == "2005"));
    assert!(unknown.iter().any(|u| u.as_str() == "2315"));
}

#[test]
fn deeply_nested_json_is_a_malformed_document_not_a_stack_overflow() {
    for depth in [200usize, 100_000] {
        let doc = format!(
            r#"[{{"IdObjet": 1001, "extra": {}{}}}]"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        let e = read_catalogue(doc.as_bytes()).expect_err("too deep");
        assert_eq!(e.problems.len(), 1, "{e}");
        assert_eq!(e.problems[0].kind, ProblemKind::Malformed, "{e}");
        assert!(e.to_string().contains("recursion limit exceeded"), "{e}");
    }
}
