//! The Redis store's batch decoders on any input: the hash decoder on fields whose names are the
//! hash's field names (picked by a byte) or foreign bytes, and the objects decoder on any bytes.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use strata_control_plane::fuzzing::{BATCH_HASH_FIELDS, decode_batch_hash, decode_objects};

fuzz_target!(|input: (Vec<(u8, Vec<u8>, Vec<u8>)>, Vec<u8>)| {
    let (entries, objects) = input;
    let fields: HashMap<Vec<u8>, Vec<u8>> = entries
        .into_iter()
        .map(|(pick, foreign, value)| {
            let name = BATCH_HASH_FIELDS
                .get(usize::from(pick))
                .map_or(foreign, |f| f.as_bytes().to_vec());
            (name, value)
        })
        .collect();
    if let Err(reason) = decode_batch_hash(&fields) {
        assert!(!reason.is_empty());
    }
    if let Err(reason) = decode_objects(&objects) {
        assert!(!reason.is_empty());
    }
});
