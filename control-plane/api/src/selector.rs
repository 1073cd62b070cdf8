//! Label and field selectors: the upstream grammar, parsing and matching.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SelectorError(pub String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Equals,
    NotEquals,
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub op: Op,
    pub values: BTreeSet<String>,
}

impl Requirement {
    fn matches(&self, get: &dyn Fn(&str) -> Option<String>) -> bool {
        let v = get(&self.key);
        match self.op {
            Op::Equals | Op::In => v.is_some_and(|v| self.values.contains(&v)),
            Op::NotEquals | Op::NotIn => v.is_none_or(|v| !self.values.contains(&v)),
            Op::Exists => v.is_some(),
            Op::DoesNotExist => v.is_none(),
        }
    }
}

/// A parsed label selector (requirements ANDed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub requirements: Vec<Requirement>,
}

fn validate_key(k: &str) -> Result<(), SelectorError> {
    let errs = crate::validation::qualified_name(k);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(SelectorError(format!(
            "invalid label key \"{k}\": {}",
            errs.join("; ")
        )))
    }
}

fn validate_value(v: &str) -> Result<(), SelectorError> {
    let errs = crate::validation::label_value(v);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(SelectorError(format!(
            "invalid label value: \"{v}\": at key: {}",
            errs.join("; ")
        )))
    }
}

/// Splits on commas that are not inside parentheses.
fn split_top(s: &str) -> Result<Vec<&str>, SelectorError> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(SelectorError(format!("unexpected ')' in selector {s:?}")));
                }
            }
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(SelectorError(format!(
            "unbalanced parentheses in selector {s:?}"
        )));
    }
    parts.push(&s[start..]);
    Ok(parts)
}

fn parse_set(s: &str) -> Result<BTreeSet<String>, SelectorError> {
    let inner = s
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| {
            SelectorError(format!("expected a parenthesized set of values, got {s:?}"))
        })?;
    let mut set = BTreeSet::new();
    for v in inner.split(',') {
        let v = v.trim();
        validate_value(v)?;
        set.insert(v.to_string());
    }
    Ok(set)
}

impl LabelSelector {
    /// Parses `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, comma = AND.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self { requirements });
        }
        for part in split_top(s)? {
            let p = part.trim();
            if p.is_empty() {
                return Err(SelectorError(format!(
                    "found '', expected: identifier in selector {s:?}"
                )));
            }
            let req = if let Some(k) = p.strip_prefix('!') {
                let k = k.trim();
                validate_key(k)?;
                Requirement {
                    key: k.into(),
                    op: Op::DoesNotExist,
                    values: BTreeSet::new(),
                }
            } else if let Some((k, v)) = p.split_once("!=") {
                let (k, v) = (k.trim(), v.trim());
                validate_key(k)?;
                validate_value(v)?;
                Requirement {
                    key: k.into(),
                    op: Op::NotEquals,
                    values: [v.to_string()].into(),
                }
            } else if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
                let (k, v) = (k.trim(), v.trim());
                validate_key(k)?;
                validate_value(v)?;
                Requirement {
                    key: k.into(),
                    op: Op::Equals,
                    values: [v.to_string()].into(),
                }
            } else if let Some(idx) = p.find(" notin ").or_else(|| p.find(" notin(")) {
                let k = p[..idx].trim();
                validate_key(k)?;
                Requirement {
                    key: k.into(),
                    op: Op::NotIn,
                    values: parse_set(&p[idx + 7..])?,
                }
            } else if let Some(idx) = p.find(" in ").or_else(|| p.find(" in(")) {
                let k = p[..idx].trim();
                validate_key(k)?;
                Requirement {
                    key: k.into(),
                    op: Op::In,
                    values: parse_set(&p[idx + 4..])?,
                }
            } else {
                if p.contains(char::is_whitespace) || p.contains('(') {
                    return Err(SelectorError(format!("unable to parse requirement: {p:?}")));
                }
                validate_key(p)?;
                Requirement {
                    key: p.into(),
                    op: Op::Exists,
                    values: BTreeSet::new(),
                }
            };
            requirements.push(req);
        }
        Ok(Self { requirements })
    }

    /// Converts a `metav1.LabelSelector` object (matchLabels + matchExpressions).
    pub fn from_label_selector_json(v: &Value) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        if let Some(Value::Object(ml)) = v.get("matchLabels") {
            for (k, val) in ml {
                let val = val.as_str().unwrap_or("").to_string();
                requirements.push(Requirement {
                    key: k.clone(),
                    op: Op::Equals,
                    values: [val].into(),
                });
            }
        }
        if let Some(Value::Array(exprs)) = v.get("matchExpressions") {
            for e in exprs {
                let key = e
                    .get("key")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let values: BTreeSet<String> = e
                    .get("values")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                let op = match e.get("operator").and_then(Value::as_str).unwrap_or("") {
                    "In" => Op::In,
                    "NotIn" => Op::NotIn,
                    "Exists" => Op::Exists,
                    "DoesNotExist" => Op::DoesNotExist,
                    other => {
                        return Err(SelectorError(format!(
                            "\"{other}\" is not a valid label selector operator"
                        )))
                    }
                };
                requirements.push(Requirement { key, op, values });
            }
        }
        Ok(Self { requirements })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches_with(&self, get: &dyn Fn(&str) -> Option<String>) -> bool {
        self.requirements.iter().all(|r| r.matches(get))
    }

    /// Matches an object's `metadata.labels` map.
    pub fn matches_value(&self, labels: Option<&Map<String, Value>>) -> bool {
        let get = |k: &str| {
            labels
                .and_then(|l| l.get(k))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        self.matches_with(&get)
    }
}

/// A parsed field selector: `=`, `==`, `!=`, comma = AND.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    pub requirements: Vec<(String, bool, String)>,
}

impl FieldSelector {
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for part in s.split(',') {
            let p = part.trim();
            if p.is_empty() {
                continue;
            }
            let (field, equal, value) = if let Some((f, v)) = p.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
                (f, true, v)
            } else {
                return Err(SelectorError(format!(
                    "invalid selector: '{s}'; can't understand '{p}'"
                )));
            };
            requirements.push((field.trim().to_string(), equal, value.trim().to_string()));
        }
        Ok(Self { requirements })
    }

    /// The field names the selector uses.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.requirements.iter().map(|(f, _, _)| f.as_str())
    }

    pub fn matches(&self, get: &dyn Fn(&str) -> Option<String>) -> bool {
        self.requirements.iter().all(|(f, equal, v)| {
            let have = get(f).unwrap_or_default();
            (have == *v) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn label_grammar() {
        let l = labels(json!({"app": "web", "tier": "fe", "env": "prod"}));
        let cases = [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app=web,tier!=x", true),
            ("env in (prod, dev)", true),
            ("env notin (prod)", false),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("missing!=x", true),
            ("", true),
        ];
        for (s, want) in cases {
            let sel = LabelSelector::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(sel.matches_value(Some(&l)), want, "{s}");
        }
        for bad in ["app=we b", "a in b", "=x", "app=web,", "a in (b"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn from_json() {
        let sel = LabelSelector::from_label_selector_json(
            &json!({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["fe"]}]}),
        )
        .unwrap();
        assert!(sel.matches_value(Some(&labels(json!({"app": "web", "tier": "fe"})))));
        assert!(!sel.matches_value(Some(&labels(json!({"app": "web"})))));
    }

    #[test]
    fn fields() {
        let fs =
            FieldSelector::parse("metadata.name=x,status.phase!=Failed,involvedObject.namespace=")
                .unwrap();
        let get = |f: &str| match f {
            "metadata.name" => Some("x".to_string()),
            "status.phase" => Some("Running".to_string()),
            _ => None,
        };
        assert!(fs.matches(&get));
        assert_eq!(
            fs.fields().collect::<Vec<_>>(),
            vec!["metadata.name", "status.phase", "involvedObject.namespace"]
        );
        assert!(FieldSelector::parse("nonsense").is_err());
    }
}
