//! W3C `traceparent` values from records' headers and Readys, read by the control plane and the
//! agent alike; what parses is written back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_control_plane::telemetry as control_plane;
use strata_worker_agent::telemetry as agent;

fuzz_target!(|text: &str| {
    let a = control_plane::parse_traceparent(text);
    let b = agent::parse_traceparent(text);
    assert_eq!(a, b, "the two readers agree");
    if let Some(sc) = a {
        assert_eq!(
            control_plane::parse_traceparent(&control_plane::traceparent(&sc)),
            Some(sc)
        );
    }
});
