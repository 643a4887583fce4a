//! `read_catalogue` on any bytes: a catalogue or named problems, never a panic; what it accepts
//! is canonical.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_core::catalogue::read_catalogue;
use strata_core::{ObjectId, Zone};

fuzz_target!(|data: &[u8]| {
    match read_catalogue(data) {
        Ok(catalogue) => {
            for o in &catalogue.objects {
                assert_eq!(ObjectId::parse(o.id.as_str()).as_ref(), Ok(&o.id));
                assert_eq!(Zone::parse(o.zone.as_str()).as_ref(), Some(&o.zone));
            }
        }
        Err(e) => assert!(!e.problems.is_empty()),
    }
});
