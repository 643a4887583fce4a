//! Order-preserving de-duplication in time linear in the list's length: parent lists come from
//! submitters and may be long, so "is it already there?" must not rescan the list per item (a
//! 16 MiB request of one object with a million parents would otherwise take 10^12 comparisons).

use std::hash::Hash;

use rustc_hash::FxHashSet;

/// Up to this many items a scan is cheaper than hashing.
const SHORT: usize = 32;

/// Removes the later copies of every item of `list[start..]`, keeping the first of each in
/// order; `list[..start]` is left alone.
pub fn dedup_tail<T: Clone + Eq + Hash>(list: &mut Vec<T>, start: usize) {
    let tail = &mut list[start..];
    let mut kept = 0;
    if tail.len() <= SHORT {
        for read in 0..tail.len() {
            if !tail[..kept].contains(&tail[read]) {
                tail.swap(kept, read);
                kept += 1;
            }
        }
    } else {
        let mut seen = FxHashSet::with_capacity_and_hasher(tail.len(), Default::default());
        for read in 0..tail.len() {
            if seen.insert(tail[read].clone()) {
                tail.swap(kept, read);
                kept += 1;
            }
        }
    }
    list.truncate(start + kept);
}

/// Removes the later copies of every item, keeping the first of each in order.
pub fn dedup_in_order<T: Clone + Eq + Hash>(list: &mut Vec<T>) {
    dedup_tail(list, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_copy_of_each_item_stays_in_order() {
        for n in [0usize, 1, 5, SHORT, SHORT + 1, 1_000] {
            // Each value three times, interleaved: 0 1 2 … 0 1 2 … 0 1 2 …
            let mut list: Vec<usize> = (0..3).flat_map(|_| 0..n).collect();
            dedup_in_order(&mut list);
            assert_eq!(list, (0..n).collect::<Vec<_>>(), "n = {n}");
        }
        let mut list = vec![3, 1, 3, 2, 1];
        dedup_in_order(&mut list);
        assert_eq!(list, [3, 1, 2]);
    }

    #[test]
    fn only_the_tail_is_touched() {
        let mut list = vec![7, 7, 1, 2, 1, 7];
        dedup_tail(&mut list, 2);
        assert_eq!(list, [7, 7, 1, 2, 7]);
        let mut long: Vec<u32> = vec![9, 9];
        long.extend((0..100).chain(0..100));
        dedup_tail(&mut long, 2);
        assert_eq!(long.len(), 102);
        assert_eq!(&long[..3], [9, 9, 0]);
    }

    #[test]
    fn a_million_copies_of_one_parent_leave_one() {
        let mut list = vec![42u64; 1_000_000];
        list.push(7);
        dedup_in_order(&mut list);
        assert_eq!(list, [42, 7]);
    }
}
