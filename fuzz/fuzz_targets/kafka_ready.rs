//! `decode_ready` on a Ready record: the first byte picks the headers (none, the right
//! `strata-type`, or the next bytes up to a 0 as its value), the rest is the value. What decodes
//! re-encodes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use rdkafka::message::{Header, OwnedHeaders};
use strata_proto::kafka::{HEADER_TYPE, TYPE_OBJECT_READY};
use strata_proto::v1::ObjectReady;
use strata_worker_agent::kafka::decode_ready;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let with = |value: &[u8]| {
        OwnedHeaders::new().insert(Header {
            key: HEADER_TYPE,
            value: Some(value),
        })
    };
    let (headers, payload) = match pick % 4 {
        0 => (None, rest),
        1 | 2 => (Some(with(TYPE_OBJECT_READY.as_bytes())), rest),
        _ => match rest.iter().position(|&b| b == 0) {
            Some(i) => (Some(with(&rest[..i])), &rest[i + 1..]),
            None => (Some(with(rest)), &[][..]),
        },
    };
    match decode_ready(
        headers.as_ref().map(OwnedHeaders::as_borrowed),
        Some(payload),
    ) {
        Ok(r) => assert_eq!(ObjectReady::decode(r.encode_to_vec().as_slice()), Ok(r)),
        Err(reason) => assert!(!reason.is_empty()),
    }
});
