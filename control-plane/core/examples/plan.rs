//! Reads a catalogue (seed or native JSON) and prints its plan: what would run, in which waves,
//! per zone, along which critical path. The pure planner only — no services.
//!
//! ```sh
//! cargo run -p strata-core --example plan -- clients/samples/catalogue.json [--all] [--allow-external-parents] [TARGET_ID…]
//! ```

use std::process::ExitCode;

use strata_core::ObjectId;
use strata_core::catalogue::read_catalogue;
use strata_core::planner::{PlanRequest, Targets, plan};

fn main() -> ExitCode {
    let mut path = None;
    let mut request = PlanRequest::default();
    let mut targets = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--all" => request.targets = Targets::All,
            "--allow-external-parents" => request.allow_external_parents = true,
            "-h" | "--help" => {
                println!(
                    "usage: plan <catalogue.json> [--all] [--allow-external-parents] [TARGET_ID...]"
                );
                return ExitCode::SUCCESS;
            }
            _ if path.is_none() => path = Some(arg),
            _ => match ObjectId::parse(&arg) {
                Ok(id) => targets.push(id),
                Err(e) => {
                    eprintln!("error: target {arg:?}: {e}");
                    return ExitCode::from(2);
                }
            },
        }
    }
    if !targets.is_empty() {
        request.targets = Targets::Ids(targets);
    }
    let Some(path) = path else {
        eprintln!("error: missing catalogue path (try clients/samples/catalogue.json)");
        return ExitCode::from(2);
    };
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: cannot read {path}: {e}");
            return ExitCode::from(2);
        }
    };
    let catalogue = match read_catalogue(&bytes) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let objects = &catalogue.objects;
    let p = match plan(objects, &request) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {path}: {e}");
            let unknown = e.unknown_parents();
            if !unknown.is_empty() {
                eprintln!(
                    "hint: {} unknown parent(s); add them to the catalogue or pass --allow-external-parents",
                    unknown.len()
                );
            }
            return ExitCode::FAILURE;
        }
    };
    println!(
        "plan {} — {} object(s) in {} wave(s)",
        &p.plan_hash[..16],
        p.len(),
        p.wave_count
    );
    for wave in 0..p.wave_count {
        let ids: Vec<String> = (0..p.len() as u32)
            .filter(|&n| p.waves[n as usize] == wave)
            .map(|n| {
                let o = p.object(objects, n);
                format!("{} ({})", o.id, o.zone)
            })
            .collect();
        println!("  wave {wave}: {}", ids.join(", "));
    }
    let zones: Vec<String> = p
        .zone_counts
        .iter()
        .map(|(z, n)| format!("{z}={n}"))
        .collect();
    println!("per zone: {}", zones.join(" "));
    let path_ids: Vec<String> = p
        .critical_path_ids(objects)
        .iter()
        .map(ToString::to_string)
        .collect();
    println!(
        "critical path: {} (expected {} ms)",
        path_ids.join(" -> "),
        p.critical_path_cost_ms
    );
    println!("shared ancestors: {}", p.shared_ancestors);
    if !p.excluded.is_empty() {
        let ids: Vec<&str> = p
            .excluded
            .iter()
            .map(|&i| objects[i as usize].id.as_str())
            .collect();
        println!("outside the targets' closure (not run): {}", ids.join(", "));
    }
    if !p.external_parents.is_empty() {
        let ids: Vec<&str> = p.external_parents.iter().map(ObjectId::as_str).collect();
        println!(
            "external parents (treated as satisfied): {}",
            ids.join(", ")
        );
    }
    ExitCode::SUCCESS
}
