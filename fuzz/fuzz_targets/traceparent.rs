//! W3C `traceparent` values from records' headers and Readys (one reader, `strata_runtime::otlp`,
//! shared by the control plane and the agent); what parses is written back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_runtime::otlp::{parse_traceparent, traceparent};

fuzz_target!(|text: &str| {
    if let Some(sc) = parse_traceparent(text) {
        assert_eq!(parse_traceparent(&traceparent(&sc)), Some(sc));
    }
});
