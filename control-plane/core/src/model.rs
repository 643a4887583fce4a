//! The domain vocabulary shared by the catalogue reader, the planner and the object state machine:
//! object ids, zones, layers, object definitions, and the dense dependency graph ([`Dag`]) that a
//! plan hands to the state machine.
//!
//! Nothing here performs I/O or reads the clock.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use smol_str::SmolStr;

use crate::graph::Csr;

/// A canonical object id.
///
/// Numeric ids are canonicalised (`"01001"`, `1001` and `1001.0` are all `"1001"`); other ids are
/// kept as given after trimming. Build one with [`ObjectId::parse`] to get the canonical form.
/// Ids of up to 23 bytes are stored inline (no heap allocation), so a catalogue of a million
/// objects and their parent lists stays compact.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ObjectId(SmolStr);

/// Why a token is not an acceptable object id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Empty or whitespace only.
    #[error("empty id")]
    Empty,
    /// Contains a character outside `[A-Za-z0-9._:-]`.
    #[error("id {0:?} has a character outside [A-Za-z0-9._:-]")]
    BadCharacter(String),
    /// Longer than [`ObjectId::MAX_LEN`].
    #[error("id {0:?} is longer than 128 characters")]
    TooLong(String),
}

impl ObjectId {
    /// Longest accepted id, in bytes.
    pub const MAX_LEN: usize = 128;

    /// Canonicalises a textual id: trims it; an all-digit id loses its leading zeros (`"0"` stays).
    pub fn parse(token: &str) -> Result<Self, IdError> {
        let t = token.trim();
        if t.is_empty() {
            return Err(IdError::Empty);
        }
        if t.len() > Self::MAX_LEN {
            return Err(IdError::TooLong(t.to_string()));
        }
        if t.bytes().all(|b| b.is_ascii_digit()) {
            let stripped = t.trim_start_matches('0');
            let canonical = if stripped.is_empty() { "0" } else { stripped };
            return Ok(Self(SmolStr::new(canonical)));
        }
        if !t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
        {
            return Err(IdError::BadCharacter(t.to_string()));
        }
        Ok(Self(SmolStr::new(t)))
    }

    /// The id of a non-negative integer.
    pub fn from_u64(n: u64) -> Self {
        let mut buf = [0u8; 20];
        let mut i = buf.len();
        let mut n = n;
        loop {
            i -= 1;
            buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        Self(SmolStr::new(
            std::str::from_utf8(&buf[i..]).expect("ascii digits"),
        ))
    }

    /// The canonical text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The layer of a numeric id: its leading digit (`1001` → 1, `2_000_417` → 2), if not zero.
    /// Non-numeric ids have no layer of their own.
    pub fn numeric_layer(&self) -> Option<u8> {
        let b = self.0.as_bytes();
        if b.iter().all(u8::is_ascii_digit) && b[0] != b'0' {
            Some(b[0] - b'0')
        } else {
            None
        }
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

impl AsRef<str> for ObjectId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A worker zone: lowercase `[a-z0-9_-]`, at most 64 bytes (it becomes part of a Kafka topic name).
///
/// Cheap to clone: every object of a zone shares one allocation.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Zone(Arc<str>);

impl Zone {
    /// Layer 1's default zone (seed label `1-Raw`).
    pub const RAW: &'static str = "raw";
    /// Layer 2's default zone (seed label `2-Standardized`).
    pub const STANDARDIZED: &'static str = "standardized";
    /// Layer 3's default zone (seed label `3-Application`).
    pub const APPLICATION: &'static str = "application";

    /// Accepts a zone name or a seed label (`"1-Raw"` → `raw`, case-insensitive).
    /// Returns `None` when the token is not a valid zone name.
    pub fn parse(token: &str) -> Option<Self> {
        let t = token.trim();
        let lower = t.to_ascii_lowercase();
        let name = match lower.as_str() {
            "1-raw" => Self::RAW,
            "2-standardized" | "2-standardised" => Self::STANDARDIZED,
            "3-application" => Self::APPLICATION,
            other => other,
        };
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return None;
        }
        Some(Self(name.into()))
    }

    /// The default zone of a layer (1 → raw, 2 → standardized, 3 → application).
    pub fn default_for_layer(layer: u8) -> Option<Self> {
        match layer {
            1 => Some(Self(Self::RAW.into())),
            2 => Some(Self(Self::STANDARDIZED.into())),
            3 => Some(Self(Self::APPLICATION.into())),
            _ => None,
        }
    }

    /// The layer a default zone stands for (raw → 1, …); `None` for other zones.
    pub fn default_layer(&self) -> Option<u8> {
        match &*self.0 {
            Self::RAW => Some(1),
            Self::STANDARDIZED => Some(2),
            Self::APPLICATION => Some(3),
            _ => None,
        }
    }

    /// The zone name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

/// One data object of a catalogue, normalised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectDef {
    /// Canonical id.
    pub id: ObjectId,
    /// Human name (seed `NomObjet`); may be empty.
    #[serde(default)]
    pub name: SmolStr,
    /// The zone whose agents run it: explicit, else the default of its layer.
    pub zone: Zone,
    /// Layer (1 = raw ingestion, 2 = standardized, 3 = application, or another configured one):
    /// the leading digit of a numeric id, else the layer of a default zone.
    #[serde(default)]
    pub layer: Option<u8>,
    /// Parent ids, canonical, de-duplicated, in first-seen order.
    #[serde(default)]
    pub parents: Vec<ObjectId>,
    /// Load frequency, a cron expression (seed `Fréquence`), validated at read time.
    #[serde(default)]
    pub frequency: Option<SmolStr>,
    /// Last successful load (seed `Lastrun`).
    #[serde(default)]
    pub last_loaded_at: Option<DateTime<Utc>>,
    /// Disabled objects are rejected by the default preflight (seed `EtatObjet` other than `actif`).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Higher runs first among objects released together.
    #[serde(default)]
    pub priority: i32,
    /// Free attributes, passed to the agent untouched.
    #[serde(default)]
    pub attributes: Attributes,
}

/// An object's free attributes: a small map kept as a vector sorted by key (a `BTreeMap` node
/// costs about 540 bytes even for one entry; a million objects each with one attribute would
/// spend half a gigabyte on them).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(
    from = "BTreeMap<SmolStr, SmolStr>",
    into = "BTreeMap<SmolStr, SmolStr>"
)]
pub struct Attributes(Vec<(SmolStr, SmolStr)>);

impl Attributes {
    /// No attribute.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// No attribute, with room for `n`.
    pub fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }

    /// Sets `key` to `value`, replacing an earlier value.
    pub fn insert(&mut self, key: impl Into<SmolStr>, value: impl Into<SmolStr>) {
        let key = key.into();
        match self
            .0
            .binary_search_by(|(k, _)| k.as_str().cmp(key.as_str()))
        {
            Ok(i) => self.0[i].1 = value.into(),
            Err(i) => self.0.insert(i, (key, value.into())),
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| self.0[i].1.as_str())
    }

    /// Whether `key` is set.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True without entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::ops::Index<&str> for Attributes {
    type Output = str;
    fn index(&self, key: &str) -> &str {
        self.get(key)
            .unwrap_or_else(|| panic!("no attribute {key:?}"))
    }
}

/// In `O(n log n)`: sorted once, a later value of a key replacing an earlier one (as
/// [`Attributes::insert`] does), not one sorted insertion per entry.
impl<K: Into<SmolStr>, V: Into<SmolStr>> FromIterator<(K, V)> for Attributes {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut entries: Vec<(SmolStr, SmolStr)> = iter
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        // Stable: equal keys stay in their given order, and the last of each run is kept.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut kept: Vec<(SmolStr, SmolStr)> = Vec::with_capacity(entries.len());
        for (k, v) in entries {
            match kept.last_mut() {
                Some(last) if last.0 == k => last.1 = v,
                _ => kept.push((k, v)),
            }
        }
        Self(kept)
    }
}

impl From<BTreeMap<SmolStr, SmolStr>> for Attributes {
    fn from(m: BTreeMap<SmolStr, SmolStr>) -> Self {
        Self(m.into_iter().collect())
    }
}

impl From<Attributes> for BTreeMap<SmolStr, SmolStr> {
    fn from(a: Attributes) -> Self {
        a.0.into_iter().collect()
    }
}

fn default_true() -> bool {
    true
}

/// Dense index of an object inside one plan (`0..n`).
pub type NodeIx = u32;

/// A dependency graph over dense indices, in compressed sparse row form: for every node, its
/// parents and its children. Built by the planner; read by the object state machine.
///
/// Invariant: acyclic, and `children` is exactly the transpose of `parents`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dag {
    parent_offsets: Vec<u32>,
    parent_list: Vec<NodeIx>,
    child_offsets: Vec<u32>,
    child_list: Vec<NodeIx>,
}

impl Dag {
    /// Builds the graph from each node's parent list. Panics if an index is out of range; the
    /// planner only calls it with validated input.
    pub fn from_parents(parents: &[Vec<NodeIx>]) -> Self {
        let mut offsets = Vec::with_capacity(parents.len() + 1);
        let mut list = Vec::with_capacity(parents.iter().map(Vec::len).sum());
        offsets.push(0);
        for ps in parents {
            list.extend_from_slice(ps);
            offsets.push(list.len() as u32);
        }
        Self::from_csr(offsets, list)
    }

    /// Builds the graph from parent lists in compressed sparse row form: node `i`'s parents are
    /// `parent_list[parent_offsets[i]..parent_offsets[i + 1]]`. Panics on out-of-range indices.
    pub fn from_csr(parent_offsets: Vec<u32>, parent_list: Vec<NodeIx>) -> Self {
        let n = parent_offsets.len().saturating_sub(1);
        let mut child_offsets = vec![0u32; n + 1];
        for &p in &parent_list {
            child_offsets[p as usize + 1] += 1;
        }
        for i in 0..n {
            child_offsets[i + 1] += child_offsets[i];
        }
        let mut fill = child_offsets.clone();
        let mut child_list = vec![0; parent_list.len()];
        for c in 0..n {
            for &p in &parent_list[parent_offsets[c] as usize..parent_offsets[c + 1] as usize] {
                let slot = &mut fill[p as usize];
                child_list[*slot as usize] = c as NodeIx;
                *slot += 1;
            }
        }
        Self {
            parent_offsets,
            parent_list,
            child_offsets,
            child_list,
        }
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.parent_offsets.len().saturating_sub(1)
    }

    /// True when the graph has no node.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of edges.
    pub fn edge_count(&self) -> usize {
        self.parent_list.len()
    }

    /// The parents of `node`.
    pub fn parents(&self, node: NodeIx) -> &[NodeIx] {
        let i = node as usize;
        &self.parent_list[self.parent_offsets[i] as usize..self.parent_offsets[i + 1] as usize]
    }

    /// The children of `node`.
    pub fn children(&self, node: NodeIx) -> &[NodeIx] {
        let i = node as usize;
        &self.child_list[self.child_offsets[i] as usize..self.child_offsets[i + 1] as usize]
    }

    /// The graph as a petgraph-traversable view over these arrays (no copy): edges go from
    /// parent to child.
    pub fn graph(&self) -> Csr<'_> {
        Csr::new(
            &self.parent_offsets,
            &self.parent_list,
            &self.child_offsets,
            &self.child_list,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_from_many_entries_are_sorted_once_and_later_values_win() {
        // 200,000 keys in reverse order (worst case for sorted insertion), one given twice.
        let n = 200_000;
        let mut entries: Vec<(String, String)> = (0..n)
            .rev()
            .map(|i| (format!("k{i:06}"), "first".to_owned()))
            .collect();
        entries.push(("k000007".into(), "second".into()));
        let a: Attributes = entries.into_iter().collect();
        assert_eq!(a.len(), n);
        assert_eq!(a.get("k000007"), Some("second"));
        assert_eq!(a.get("k199999"), Some("first"));
        let keys: Vec<&str> = a.iter().map(|(k, _)| k).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "in key order");
    }

    #[test]
    fn numeric_ids_lose_leading_zeros() {
        assert_eq!(ObjectId::parse(" 01001 ").unwrap().as_str(), "1001");
        assert_eq!(ObjectId::parse("000").unwrap().as_str(), "0");
        assert_eq!(ObjectId::parse("orders.v2").unwrap().as_str(), "orders.v2");
        assert_eq!(ObjectId::parse("  "), Err(IdError::Empty));
        assert!(matches!(
            ObjectId::parse("a b"),
            Err(IdError::BadCharacter(_))
        ));
    }

    #[test]
    fn layer_is_the_leading_digit() {
        assert_eq!(ObjectId::parse("1001").unwrap().numeric_layer(), Some(1));
        assert_eq!(ObjectId::parse("2000417").unwrap().numeric_layer(), Some(2));
        assert_eq!(ObjectId::parse("0").unwrap().numeric_layer(), None);
        assert_eq!(ObjectId::parse("x1").unwrap().numeric_layer(), None);
    }

    #[test]
    fn seed_zone_labels_map_to_default_zones() {
        assert_eq!(Zone::parse("1-Raw").unwrap().as_str(), "raw");
        assert_eq!(
            Zone::parse("2-Standardized").unwrap().as_str(),
            "standardized"
        );
        assert_eq!(
            Zone::parse("3-Application").unwrap().as_str(),
            "application"
        );
        assert_eq!(Zone::parse("EU_west-1").unwrap().as_str(), "eu_west-1");
        assert!(Zone::parse("bad zone").is_none());
        assert!(Zone::parse("").is_none());
    }

    #[test]
    fn dag_children_are_the_transpose_of_parents() {
        // 0 -> 2, 1 -> 2, 2 -> 3, 0 -> 3
        let dag = Dag::from_parents(&[vec![], vec![], vec![0, 1], vec![2, 0]]);
        assert_eq!(dag.len(), 4);
        assert_eq!(dag.edge_count(), 4);
        assert_eq!(dag.children(0), &[2, 3]);
        assert_eq!(dag.children(1), &[2]);
        assert_eq!(dag.children(2), &[3]);
        assert!(dag.children(3).is_empty());
        assert_eq!(dag.parents(3), &[2, 0]);
    }
}
