//! The Redis store's node record decoder on any bytes; what decodes re-encodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_control_plane::fuzzing::{decode_record, encode_record};

fuzz_target!(|data: &[u8]| {
    match decode_record(data) {
        Ok(r) => {
            let mut out = Vec::new();
            encode_record(&r, &mut out);
            assert_eq!(decode_record(&out), Ok(r));
        }
        Err(reason) => assert!(!reason.is_empty()),
    }
});
