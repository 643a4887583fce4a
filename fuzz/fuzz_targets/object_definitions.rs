//! Submitted object definitions (the `objects` of a `SubmitBatch` or of a stream's chunks) as
//! tonic decodes them from any bytes, validated by `convert::object_defs`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use strata_control_plane::convert::object_defs;
use strata_core::ObjectId;
use strata_proto::v1::ObjectList;

fuzz_target!(|data: &[u8]| {
    let Ok(list) = ObjectList::decode(data) else {
        return;
    };
    match object_defs(list.objects) {
        Ok(defs) => {
            for d in defs {
                assert_eq!(ObjectId::parse(d.id.as_str()).as_ref(), Ok(&d.id));
            }
        }
        Err(problems) => assert!(!problems.is_empty()),
    }
});
