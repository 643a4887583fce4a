//! `decode_result` on a results record: the first byte picks the `strata-type` header (none, the
//! right one, or the next bytes up to a 0), the rest is the value. What decodes is exactly what
//! its protobuf message says.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use strata_control_plane::adapters::kafka::decode_result;
use strata_control_plane::convert;
use strata_proto::kafka::TYPE_OBJECT_RESULT;
use strata_proto::v1::ObjectResult;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let (header, payload) = match pick % 4 {
        0 => (None, rest),
        1 | 2 => (Some(TYPE_OBJECT_RESULT.as_bytes()), rest),
        _ => match rest.iter().position(|&b| b == 0) {
            Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
            None => (Some(rest), &[][..]),
        },
    };
    match decode_result(header, Some(payload)) {
        // Exactly what the protobuf message says, as a report.
        Ok(r) => assert_eq!(
            ObjectResult::decode(payload).ok().and_then(convert::agent_report),
            Some(r)
        ),
        Err(reason) => assert!(!reason.is_empty()),
    }
});
