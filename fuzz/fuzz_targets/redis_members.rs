//! The Redis store's text decoders on any string: list cursors (given back by callers),
//! sorted-set members and scores. What splits joins back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_control_plane::fuzzing::{
    decode_cursor, encode_cursor, parse_dead_member, parse_retry_member, parse_score, retry_member,
};

fuzz_target!(|text: &str| {
    if let Ok((score, member)) = decode_cursor(text) {
        assert_eq!(encode_cursor(&score, &member), text);
    }
    if let Ok((b, n, a)) = parse_retry_member(text) {
        assert_eq!(
            parse_retry_member(&retry_member(&b, n, a)),
            Ok((b.clone(), n, a))
        );
    }
    if let Ok((b, n)) = parse_dead_member(text) {
        assert_eq!(parse_dead_member(&format!("{b}:{n}")), Ok((b.clone(), n)));
    }
    let _ = parse_score(text);
});
