//! Structure-aware corruption for the `decode_arbitrary` tests of every crate: a valid encoding
//! with a few edits applied (truncated, bits flipped, bytes set or inserted — random or a token of
//! the format —, a range removed, a range copied elsewhere, two ranges swapped). Positions are
//! [`Index`]es, so one edit list fits an input of any length.
//!
//! Included by path from the other crates' tests (`#[path = ...] mod mutate;`): one mutator for
//! every decoder.

#![allow(dead_code)] // each test file uses part of it

use proptest::prelude::*;
use proptest::sample::Index;

/// One edit of a byte string.
#[derive(Debug, Clone)]
pub enum Edit {
    /// Keep the bytes before a position.
    Truncate(Index),
    /// Flip one bit of a byte.
    FlipBit(Index, u8),
    /// Overwrite a byte.
    SetByte(Index, u8),
    /// Insert bytes (random, or a token of the format) before a position.
    Insert(Index, Vec<u8>),
    /// Remove up to `len` bytes from a position.
    Remove(Index, usize),
    /// Copy up to `len` bytes from one position to another (a duplicated field).
    Duplicate(Index, usize, Index),
    /// Swap two ranges of up to `len` bytes (fields swapped).
    Swap(Index, Index, usize),
}

/// Bytes that break or bend most encodings: varint continuation bits, extremes, separators.
const INTERESTING: &[u8] = &[0x00, 0x01, 0x7f, 0x80, 0xff, b'\n', b':', b'-', b'+', b'0'];

/// One to four edits; inserted bytes are random, interesting, or one of `tokens`.
pub fn edits(tokens: &'static [&'static str]) -> impl Strategy<Value = Vec<Edit>> {
    let byte = prop_oneof![any::<u8>(), prop::sample::select(INTERESTING)];
    let insert = prop_oneof![
        prop::collection::vec(byte.clone(), 1..8),
        prop::sample::select(tokens).prop_map(|t| t.as_bytes().to_vec()),
    ];
    let edit = prop_oneof![
        any::<Index>().prop_map(Edit::Truncate),
        (any::<Index>(), 0u8..8).prop_map(|(i, b)| Edit::FlipBit(i, b)),
        (any::<Index>(), byte).prop_map(|(i, v)| Edit::SetByte(i, v)),
        (any::<Index>(), insert).prop_map(|(i, v)| Edit::Insert(i, v)),
        (any::<Index>(), 1usize..16).prop_map(|(i, n)| Edit::Remove(i, n)),
        (any::<Index>(), 1usize..32, any::<Index>()).prop_map(|(a, n, b)| Edit::Duplicate(a, n, b)),
        (any::<Index>(), any::<Index>(), 1usize..16).prop_map(|(a, b, n)| Edit::Swap(a, b, n)),
    ];
    prop::collection::vec(edit, 1..5)
}

/// Applies the edits in order (an edit on an empty input does nothing, or inserts).
pub fn apply(bytes: &mut Vec<u8>, edits: &[Edit]) {
    for e in edits {
        let len = bytes.len();
        match e {
            Edit::Insert(at, v) => {
                let at = at.index(len + 1);
                bytes.splice(at..at, v.iter().copied());
            }
            _ if len == 0 => {}
            Edit::Truncate(at) => bytes.truncate(at.index(len)),
            Edit::FlipBit(at, bit) => bytes[at.index(len)] ^= 1 << bit,
            Edit::SetByte(at, v) => bytes[at.index(len)] = *v,
            Edit::Remove(at, n) => {
                let at = at.index(len);
                bytes.drain(at..(at + n).min(len));
            }
            Edit::Duplicate(from, n, to) => {
                let from = from.index(len);
                let copy = bytes[from..(from + n).min(len)].to_vec();
                let to = to.index(len + 1);
                bytes.splice(to..to, copy);
            }
            Edit::Swap(a, b, n) => {
                let (a, b) = (a.index(len), b.index(len));
                let (lo, hi) = (a.min(b), a.max(b));
                let n = (*n).min(hi - lo).min(len - hi);
                if n > 0 {
                    let (left, right) = bytes.split_at_mut(hi);
                    left[lo..lo + n].swap_with_slice(&mut right[..n]);
                }
            }
        }
    }
}

/// A string that reads the edited bytes as UTF-8, losing what is not (for decoders of `&str`).
pub fn apply_str(text: &str, edits: &[Edit]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    apply(&mut bytes, edits);
    String::from_utf8_lossy(&bytes).into_owned()
}
