//! Page tokens given back by callers, against any filters; a position decoded is encoded again
//! to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_control_plane::fuzzing::{decode_token, encode_token};

fuzz_target!(|input: (&str, &str)| {
    let (filters, token) = input;
    if let Ok(Some(position)) = decode_token(token, filters) {
        let again = decode_token(&encode_token(filters, &position), filters);
        assert_eq!(again.ok(), Some(Some(position)));
    }
});
