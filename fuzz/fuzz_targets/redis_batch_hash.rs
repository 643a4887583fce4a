//! The Redis store's batch hash decoder on any fields: each entry's name is one of the hash's
//! field names (picked by a byte) or foreign bytes.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use strata_control_plane::fuzzing::{BATCH_HASH_FIELDS, decode_batch_hash};

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
    match decode_batch_hash(&fields, objects.clone()) {
        Ok((batch, _)) => assert_eq!(batch.objects_json, objects),
        Err(reason) => assert!(!reason.is_empty()),
    }
});
