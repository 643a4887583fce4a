//! Preflight rules (`docs/design.md#preflight`): checks configured per zone that reject an object before it is
//! ever dispatched. A rejected object is `DEAD` with reason `preflight` and the rule's message as
//! its last error; its descendants are `UPSTREAM_FAILED`.
//!
//! Rules, all optional:
//! - a disabled object (`enabled = false`, the seed's `EtatObjet` other than `actif`) is always
//!   rejected;
//! - `require_attributes`: attribute keys that must be present and non-blank (e.g. `URL`);
//! - `reject_ids`: id patterns that are rejected (e.g. `*99`, the seed's suffix rule);
//! - `allow_ids`: if not empty, an id must match one of these patterns (e.g. `1*` for raw).
//!
//! Patterns are globs over the whole id: `*` matches any run of characters (also none), `?`
//! exactly one, everything else itself. Matching is linear-time and iterative. Pure; no I/O.

use serde::{Deserialize, Serialize};

use crate::model::ObjectDef;

/// The preflight rules of one zone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PreflightRules {
    /// Attribute keys that must be present with a non-blank value.
    pub require_attributes: Vec<String>,
    /// Id patterns rejected.
    pub reject_ids: Vec<String>,
    /// If not empty, the id patterns accepted (any other id is rejected).
    pub allow_ids: Vec<String>,
}

/// Why a set of rules is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreflightError {
    /// A pattern is empty.
    #[error("{field}: empty pattern")]
    EmptyPattern {
        /// `reject_ids` or `allow_ids`.
        field: &'static str,
    },
    /// A required attribute name is blank.
    #[error("require_attributes: blank attribute name")]
    BlankAttribute,
}

impl PreflightRules {
    /// Checks the rules.
    pub fn validate(&self) -> Result<(), PreflightError> {
        for (field, patterns) in [
            ("reject_ids", &self.reject_ids),
            ("allow_ids", &self.allow_ids),
        ] {
            if patterns.iter().any(String::is_empty) {
                return Err(PreflightError::EmptyPattern { field });
            }
        }
        if self.require_attributes.iter().any(|a| a.trim().is_empty()) {
            return Err(PreflightError::BlankAttribute);
        }
        Ok(())
    }

    /// Why `object` is rejected, or `None` if it passes.
    pub fn check(&self, object: &ObjectDef) -> Option<String> {
        if !object.enabled {
            return Some(format!("object {} is disabled", object.id));
        }
        let id = object.id.as_str();
        if let Some(p) = self.reject_ids.iter().find(|p| glob_match(p, id)) {
            return Some(format!(
                "object {id} matches the rejected id pattern {p:?} of zone {}",
                object.zone
            ));
        }
        if !self.allow_ids.is_empty() && !self.allow_ids.iter().any(|p| glob_match(p, id)) {
            return Some(format!(
                "object {id} matches none of the allowed id patterns of zone {} ({})",
                object.zone,
                self.allow_ids.join(", ")
            ));
        }
        let missing: Vec<&str> = self
            .require_attributes
            .iter()
            .filter(|key| {
                object
                    .attributes
                    .get(key)
                    .is_none_or(|v| v.trim().is_empty())
            })
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Some(format!(
                "object {id} lacks the attribute(s) zone {} requires: {}",
                object.zone,
                missing.join(", ")
            ));
        }
        None
    }
}

/// Whether `text` matches the glob `pattern` (`*`, `?`), over the whole text.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it currently covers up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ObjectId, Zone};

    fn object(id: &str, attrs: &[(&str, &str)]) -> ObjectDef {
        let mut attributes = crate::model::Attributes::new();
        for (k, v) in attrs {
            attributes.insert(*k, *v);
        }
        ObjectDef {
            id: ObjectId::parse(id).expect("id"),
            name: Default::default(),
            zone: Zone::parse("raw").expect("zone"),
            layer: Some(1),
            parents: Vec::new(),
            frequency: None,
            last_loaded_at: None,
            enabled: true,
            priority: 0,
            attributes,
        }
    }

    #[test]
    fn globs_match_the_whole_id() {
        for (p, t, want) in [
            ("*99", "1099", true),
            ("*99", "1098", false),
            ("1*", "1001", true),
            ("1*", "2001", false),
            ("10?1", "1001", true),
            ("10?1", "10001", false),
            ("*", "", true),
            ("", "", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("**x", "x", true),
            ("*a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false),
        ] {
            assert_eq!(glob_match(p, t), want, "{p:?} vs {t:?}");
        }
    }

    #[test]
    fn rules_name_the_object_and_the_rule() {
        let rules = PreflightRules {
            require_attributes: vec!["URL".into(), "Format".into()],
            reject_ids: vec!["*99".into()],
            allow_ids: vec!["1*".into()],
        };
        rules.validate().expect("valid");
        assert_eq!(
            rules.check(&object("1001", &[("URL", "https://x"), ("Format", "json")])),
            None
        );
        let r = rules.check(&object("1099", &[])).expect("rejected");
        assert!(r.contains("1099") && r.contains("*99"), "{r}");
        let r = rules.check(&object("2001", &[])).expect("rejected");
        assert!(r.contains("2001") && r.contains("1*"), "{r}");
        let r = rules
            .check(&object("1002", &[("URL", " "), ("Other", "x")]))
            .expect("rejected");
        assert!(r.contains("URL, Format"), "{r}");
        let mut disabled = object("1003", &[("URL", "u"), ("Format", "f")]);
        disabled.enabled = false;
        assert!(
            PreflightRules::default()
                .check(&disabled)
                .expect("rejected")
                .contains("disabled")
        );
        assert_eq!(
            PreflightRules {
                reject_ids: vec![String::new()],
                ..Default::default()
            }
            .validate(),
            Err(PreflightError::EmptyPattern {
                field: "reject_ids"
            })
        );
    }
}
