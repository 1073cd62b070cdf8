//! Label and field selectors: the upstream grammar (`k8s.io/apimachinery/pkg/labels`
//! and `pkg/fields`), parsing, validation and matching. Pure functions.
//!
//! Label selectors: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`,
//! and the rarely used `k>1` / `k<1` (integers), comma = AND, whitespace anywhere
//! between tokens. Keys and values are validated like upstream (qualified names,
//! label values). Requirements are kept sorted by key, as upstream does.
//!
//! Field selectors: `f=v`, `f==v`, `f!=v`, comma = AND, `\` escapes `,`, `=`, `!` and
//! `\` in values; values may be empty. Which fields exist is up to the caller
//! (upstream answers 400 `field label not supported: <f>` for the others).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::{Map, Value};

/// A selector that does not parse or is not valid; the message is upstream's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SelectorError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, SelectorError> {
    Err(SelectorError(msg.into()))
}

// ---------------------------------------------------------------------------------
// Label syntax validation.
// ---------------------------------------------------------------------------------

const QUALIFIED_NAME_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

fn name_chars_ok(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn dns1123_subdomain_ok(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        })
}

/// Problems with a label key (a qualified name: `[prefix/]name`), upstream wording.
pub fn label_key_errors(key: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = key.split('/').collect();
    let (prefix, name) = match parts.as_slice() {
        [name] => (None, *name),
        [prefix, name] => (Some(*prefix), *name),
        _ => {
            return vec![format!(
                "a qualified name {QUALIFIED_NAME_MSG} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            )]
        }
    };
    if let Some(p) = prefix {
        if p.is_empty() {
            errs.push("prefix part must be non-empty".to_string());
        } else if !dns1123_subdomain_ok(p) {
            errs.push(format!("prefix part {DNS1123_SUBDOMAIN_MSG}"));
        }
    }
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else {
        if name.len() > 63 {
            errs.push("name part must be no more than 63 characters".to_string());
        }
        if !name_chars_ok(name) {
            errs.push(format!("name part {QUALIFIED_NAME_MSG}"));
        }
    }
    errs
}

/// Problems with a label value, upstream wording.
pub fn label_value_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    if !value.is_empty() && !name_chars_ok(value) {
        errs.push(LABEL_VALUE_MSG.to_string());
    }
    errs
}

fn validate_key(key: &str) -> Result<(), SelectorError> {
    let errs = label_key_errors(key);
    if errs.is_empty() {
        Ok(())
    } else {
        err(format!(
            "key: Invalid value: \"{key}\": {}",
            errs.join("; ")
        ))
    }
}

fn validate_value(key: &str, i: usize, value: &str) -> Result<(), SelectorError> {
    let errs = label_value_errors(value);
    if errs.is_empty() {
        Ok(())
    } else {
        err(format!(
            "values[{i}][{key}]: Invalid value: \"{value}\": {}",
            errs.join("; ")
        ))
    }
}

// ---------------------------------------------------------------------------------
// Label selectors.
// ---------------------------------------------------------------------------------

/// A label selector operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `k=v`
    Equals,
    /// `k==v`
    DoubleEquals,
    /// `k!=v`
    NotEquals,
    /// `k in (a,b)`
    In,
    /// `k notin (a,b)`
    NotIn,
    /// `k`
    Exists,
    /// `!k`
    DoesNotExist,
    /// `k>1` (integer comparison)
    GreaterThan,
    /// `k<1` (integer comparison)
    LessThan,
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub op: Op,
    pub values: BTreeSet<String>,
}

impl Requirement {
    /// Checks operator/value-count rules and key/value syntax (upstream `NewRequirement`).
    pub fn new(key: &str, op: Op, values: Vec<String>) -> Result<Self, SelectorError> {
        validate_key(key)?;
        match op {
            Op::In | Op::NotIn if values.is_empty() => {
                return err("values: Invalid value: []: for 'in', 'notin' operators, values set can't be empty")
            }
            Op::Equals | Op::DoubleEquals | Op::NotEquals if values.len() != 1 => {
                return err(format!(
                    "values: Invalid value: {values:?}: exact-match compatibility requires one single value"
                ))
            }
            Op::Exists | Op::DoesNotExist if !values.is_empty() => {
                return err(format!(
                    "values: Invalid value: {values:?}: values set must be empty for exists and does not exist"
                ))
            }
            Op::GreaterThan | Op::LessThan => {
                if values.len() != 1 {
                    return err(format!(
                        "values: Invalid value: {values:?}: for 'Gt', 'Lt' operators, exactly one value is required"
                    ));
                }
                if values[0].parse::<i64>().is_err() {
                    return err(format!(
                        "values[0]: Invalid value: \"{}\": for 'Gt', 'Lt' operators, the value must be an integer",
                        values[0]
                    ));
                }
            }
            _ => {}
        }
        if !matches!(op, Op::GreaterThan | Op::LessThan) {
            for (i, v) in values.iter().enumerate() {
                validate_value(key, i, v)?;
            }
        }
        Ok(Requirement {
            key: key.to_string(),
            op,
            values: values.into_iter().collect(),
        })
    }

    /// Whether labels (looked up by `get`) satisfy this requirement.
    pub fn matches(&self, get: &dyn Fn(&str) -> Option<String>) -> bool {
        let v = get(&self.key);
        match self.op {
            Op::Equals | Op::DoubleEquals | Op::In => v.is_some_and(|v| self.values.contains(&v)),
            Op::NotEquals | Op::NotIn => v.is_none_or(|v| !self.values.contains(&v)),
            Op::Exists => v.is_some(),
            Op::DoesNotExist => v.is_none(),
            Op::GreaterThan | Op::LessThan => {
                let Some(have) = v.and_then(|v| v.parse::<i64>().ok()) else {
                    return false;
                };
                let Some(want) = self
                    .values
                    .iter()
                    .next()
                    .and_then(|w| w.parse::<i64>().ok())
                else {
                    return false;
                };
                if self.op == Op::GreaterThan {
                    have > want
                } else {
                    have < want
                }
            }
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let one = || self.values.iter().next().cloned().unwrap_or_default();
        let set = || self.values.iter().cloned().collect::<Vec<_>>().join(",");
        match self.op {
            Op::Exists => write!(f, "{}", self.key),
            Op::DoesNotExist => write!(f, "!{}", self.key),
            Op::Equals => write!(f, "{}={}", self.key, one()),
            Op::DoubleEquals => write!(f, "{}=={}", self.key, one()),
            Op::NotEquals => write!(f, "{}!={}", self.key, one()),
            Op::GreaterThan => write!(f, "{}>{}", self.key, one()),
            Op::LessThan => write!(f, "{}<{}", self.key, one()),
            Op::In => write!(f, "{} in ({})", self.key, set()),
            Op::NotIn => write!(f, "{} notin ({})", self.key, set()),
        }
    }
}

/// A parsed label selector: requirements ANDed, sorted by key. The empty selector
/// matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub requirements: Vec<Requirement>,
    /// A null `metav1.LabelSelector` selects nothing.
    nothing: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Not,
    NotEquals,
    Equals,
    DoubleEquals,
    Gt,
    Lt,
    Open,
    Close,
    Comma,
    End,
}

impl Tok {
    fn literal(&self) -> &str {
        match self {
            Tok::Ident(s) => s,
            Tok::Not => "!",
            Tok::NotEquals => "!=",
            Tok::Equals => "=",
            Tok::DoubleEquals => "==",
            Tok::Gt => ">",
            Tok::Lt => "<",
            Tok::Open => "(",
            Tok::Close => ")",
            Tok::Comma => ",",
            Tok::End => "",
        }
    }
}

fn lex(s: &str) -> Vec<Tok> {
    let mut toks = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let special = |c: char| matches!(c, '=' | '!' | '(' | ')' | ',' | '>' | '<');
        if special(c) {
            chars.next();
            let next = chars.peek().copied();
            let tok = match (c, next) {
                ('!', Some('=')) => {
                    chars.next();
                    Tok::NotEquals
                }
                ('=', Some('=')) => {
                    chars.next();
                    Tok::DoubleEquals
                }
                ('!', _) => Tok::Not,
                ('=', _) => Tok::Equals,
                ('(', _) => Tok::Open,
                (')', _) => Tok::Close,
                (',', _) => Tok::Comma,
                ('>', _) => Tok::Gt,
                _ => Tok::Lt,
            };
            toks.push(tok);
            continue;
        }
        let mut ident = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() || special(c) {
                break;
            }
            ident.push(c);
            chars.next();
        }
        toks.push(Tok::Ident(ident));
    }
    toks.push(Tok::End);
    toks
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> &Tok {
        self.toks.get(self.pos).unwrap_or(&Tok::End)
    }

    fn next(&mut self) -> Tok {
        let t = self.peek().clone();
        if self.pos < self.toks.len() {
            self.pos += 1;
        }
        t
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        let mut op = None;
        let mut tok = self.next();
        if tok == Tok::Not {
            op = Some(Op::DoesNotExist);
            tok = self.next();
        }
        let Tok::Ident(key) = tok else {
            return err(format!("found '{}', expected: identifier", tok.literal()));
        };
        validate_key(&key)?;
        if matches!(self.peek(), Tok::End | Tok::Comma) {
            return Requirement::new(&key, op.unwrap_or(Op::Exists), Vec::new());
        }
        if op.is_some() {
            let t = self.next();
            return err(format!(
                "found '{}', expected: ',' or 'end of string'",
                t.literal()
            ));
        }
        let op_tok = self.next();
        let op = match &op_tok {
            Tok::Ident(s) if s == "in" => Op::In,
            Tok::Ident(s) if s == "notin" => Op::NotIn,
            Tok::Equals => Op::Equals,
            Tok::DoubleEquals => Op::DoubleEquals,
            Tok::NotEquals => Op::NotEquals,
            Tok::Gt => Op::GreaterThan,
            Tok::Lt => Op::LessThan,
            other => {
                return err(format!(
                    "found '{}', expected: in, notin, =, ==, !=, gt, lt",
                    other.literal()
                ))
            }
        };
        let values = match op {
            Op::In | Op::NotIn => self.value_set()?,
            _ => self.exact_value()?,
        };
        Requirement::new(&key, op, values)
    }

    fn exact_value(&mut self) -> Result<Vec<String>, SelectorError> {
        if matches!(self.peek(), Tok::End | Tok::Comma) {
            return Ok(vec![String::new()]);
        }
        match self.next() {
            Tok::Ident(v) => Ok(vec![v]),
            t => err(format!("found '{}', expected: identifier", t.literal())),
        }
    }

    fn value_set(&mut self) -> Result<Vec<String>, SelectorError> {
        let t = self.next();
        if t != Tok::Open {
            return err(format!("found '{}', expected: '('", t.literal()));
        }
        let mut values = BTreeSet::new();
        // Upstream: `()` is the set {""}; empty items around commas are "".
        let mut expect_value = true;
        loop {
            match self.next() {
                Tok::Ident(v) if expect_value => {
                    values.insert(v);
                    expect_value = false;
                }
                Tok::Comma => {
                    if expect_value {
                        values.insert(String::new());
                    }
                    expect_value = true;
                }
                Tok::Close => {
                    if expect_value {
                        values.insert(String::new());
                    }
                    return Ok(values.into_iter().collect());
                }
                Tok::End => return err("found '', expected: ')'"),
                t if expect_value => {
                    return err(format!(
                        "found '{}', expected: ',', ')' or identifier",
                        t.literal()
                    ))
                }
                t => return err(format!("found '{}', expected: ',' or ')'", t.literal())),
            }
        }
    }
}

impl LabelSelector {
    /// The selector matching everything.
    pub fn everything() -> Self {
        Self::default()
    }

    /// The selector matching nothing (a null `metav1.LabelSelector`).
    pub fn nothing() -> Self {
        Self {
            requirements: Vec::new(),
            nothing: true,
        }
    }

    /// Parses the string form (`labelSelector` query parameter, `Scale.status.selector`).
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut p = Parser {
            toks: lex(s),
            pos: 0,
        };
        let mut requirements = Vec::new();
        loop {
            match p.peek() {
                Tok::End => break,
                Tok::Ident(_) | Tok::Not => {
                    requirements.push(p.requirement()?);
                    match p.next() {
                        Tok::End => break,
                        Tok::Comma => {
                            if !matches!(p.peek(), Tok::Ident(_) | Tok::Not) {
                                return err(format!(
                                    "found '{}', expected: identifier after ','",
                                    p.peek().literal()
                                ));
                            }
                        }
                        t => {
                            return err(format!(
                                "found '{}', expected: ',' or 'end of string'",
                                t.literal()
                            ))
                        }
                    }
                }
                t => {
                    return err(format!(
                        "found '{}', expected: !, identifier, or 'end of string'",
                        t.literal()
                    ))
                }
            }
        }
        requirements.sort_by(|a: &Requirement, b: &Requirement| a.key.cmp(&b.key));
        Ok(Self {
            requirements,
            nothing: false,
        })
    }

    /// Converts a `metav1.LabelSelector` object (`matchLabels` + `matchExpressions`
    /// with `In`, `NotIn`, `Exists`, `DoesNotExist`), like upstream
    /// `LabelSelectorAsSelector`: `null` selects nothing, `{}` everything.
    pub fn from_label_selector_json(v: &Value) -> Result<Self, SelectorError> {
        let obj = match v {
            Value::Null => return Ok(Self::nothing()),
            Value::Object(o) => o,
            other => return err(format!("a label selector must be an object, got {other}")),
        };
        let mut requirements = Vec::new();
        match obj.get("matchLabels") {
            None | Some(Value::Null) => {}
            Some(Value::Object(ml)) => {
                for (k, val) in ml {
                    let Some(val) = val.as_str() else {
                        return err(format!(
                            "matchLabels[{k}]: Invalid value: {val}: must be a string"
                        ));
                    };
                    requirements.push(Requirement::new(k, Op::Equals, vec![val.to_string()])?);
                }
            }
            Some(other) => {
                return err(format!(
                    "matchLabels: Invalid value: {other}: must be an object"
                ))
            }
        }
        match obj.get("matchExpressions") {
            None | Some(Value::Null) => {}
            Some(Value::Array(exprs)) => {
                for e in exprs {
                    let key = e.get("key").and_then(Value::as_str).unwrap_or("");
                    let values: Vec<String> = match e.get("values") {
                        None | Some(Value::Null) => Vec::new(),
                        Some(Value::Array(a)) => a
                            .iter()
                            .map(|v| match v {
                                Value::String(s) => Ok(s.clone()),
                                other => {
                                    err(format!("values: Invalid value: {other}: must be a string"))
                                }
                            })
                            .collect::<Result<_, _>>()?,
                        Some(other) => {
                            return err(format!("values: Invalid value: {other}: must be a list"))
                        }
                    };
                    let op = match e.get("operator").and_then(Value::as_str).unwrap_or("") {
                        "In" => Op::In,
                        "NotIn" => Op::NotIn,
                        "Exists" => Op::Exists,
                        "DoesNotExist" => Op::DoesNotExist,
                        other => {
                            return err(format!("{other:?} is not a valid label selector operator"))
                        }
                    };
                    requirements.push(Requirement::new(key, op, values)?);
                }
            }
            Some(other) => {
                return err(format!(
                    "matchExpressions: Invalid value: {other}: must be a list"
                ))
            }
        }
        requirements.sort_by(|a: &Requirement, b: &Requirement| a.key.cmp(&b.key));
        Ok(Self {
            requirements,
            nothing: false,
        })
    }

    /// True for the selector matching everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty() && !self.nothing
    }

    /// True for the selector matching nothing.
    pub fn is_nothing(&self) -> bool {
        self.nothing
    }

    /// Matches labels looked up by `get`.
    pub fn matches_with(&self, get: &dyn Fn(&str) -> Option<String>) -> bool {
        !self.nothing && self.requirements.iter().all(|r| r.matches(get))
    }

    /// Matches a label map.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_with(&|k: &str| labels.get(k).cloned())
    }

    /// Matches an object's `metadata.labels` (None: no labels). Non-string values
    /// count as absent.
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

impl fmt::Display for LabelSelector {
    /// The canonical string form (requirements sorted by key, comma separated).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.requirements.iter().map(ToString::to_string).collect();
        write!(f, "{}", parts.join(","))
    }
}

// ---------------------------------------------------------------------------------
// Field selectors.
// ---------------------------------------------------------------------------------

/// A field selector operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldOp {
    /// `=` or `==`
    Equals,
    /// `!=`
    NotEquals,
}

/// One term of a field selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    pub field: String,
    pub op: FieldOp,
    /// The unescaped value (may be empty).
    pub value: String,
}

impl FieldRequirement {
    /// `field` has value `have` (`None`: absent, compared as "").
    pub fn matches(&self, have: Option<&str>) -> bool {
        let equal = have.unwrap_or("") == self.value;
        match self.op {
            FieldOp::Equals => equal,
            FieldOp::NotEquals => !equal,
        }
    }
}

/// A parsed field selector: terms ANDed. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    requirements: Vec<FieldRequirement>,
}

/// Splits on commas not escaped by `\`.
fn split_terms(s: &str) -> Vec<String> {
    let mut terms = Vec::new();
    let mut cur = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            cur.push('\\');
            cur.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == ',' {
            terms.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    if escaped {
        cur.push('\\');
    }
    terms.push(cur);
    terms
}

/// Finds the first unescaped operator: `!=`, `==` or `=`.
fn split_operator(term: &str) -> Option<(&str, FieldOp, &str)> {
    let b = term.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'!' if b.get(i + 1) == Some(&b'=') => {
                return Some((&term[..i], FieldOp::NotEquals, &term[i + 2..]))
            }
            b'=' if b.get(i + 1) == Some(&b'=') => {
                return Some((&term[..i], FieldOp::Equals, &term[i + 2..]))
            }
            b'=' => return Some((&term[..i], FieldOp::Equals, &term[i + 1..])),
            _ => i += 1,
        }
    }
    None
}

fn unescape(s: &str) -> Result<String, SelectorError> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(e @ ('\\' | ',' | '=' | '!')) => out.push(e),
                Some(e) => {
                    return err(format!(
                        "invalid field selector: invalid escape sequence: \\{e}"
                    ))
                }
                None => return err("invalid field selector: unterminated escape sequence"),
            }
        } else if matches!(c, ',' | '=') {
            return err(format!(
                "invalid field selector: unescaped {c} in value {s:?}"
            ));
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

impl FieldSelector {
    /// Parses `f=v`, `f==v`, `f!=v` terms separated by commas (empty terms skipped).
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for term in split_terms(s) {
            let t = term.trim();
            if t.is_empty() {
                continue;
            }
            let Some((field, op, value)) = split_operator(t) else {
                return err(format!("invalid selector: '{s}'; can't understand '{t}'"));
            };
            let field = field.trim();
            if field.is_empty() {
                return err(format!("invalid selector: '{s}'; can't understand '{t}'"));
            }
            requirements.push(FieldRequirement {
                field: field.to_string(),
                op,
                value: unescape(value.trim())?,
            });
        }
        Ok(Self { requirements })
    }

    /// The terms, in the order given.
    pub fn requirements(&self) -> &[FieldRequirement] {
        &self.requirements
    }

    /// The field names used (for the caller's "field label not supported" check).
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.requirements.iter().map(|r| r.field.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The value required by an `=` term on `field`, if any (e.g. `metadata.name` to
    /// narrow a list to one key).
    pub fn exact(&self, field: &str) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| r.field == field && r.op == FieldOp::Equals)
            .map(|r| r.value.as_str())
    }

    /// Evaluates against field values looked up by `get` (None: absent, i.e. "").
    pub fn matches(&self, get: &dyn Fn(&str) -> Option<String>) -> bool {
        self.requirements
            .iter()
            .all(|r| r.matches(get(&r.field).as_deref()))
    }
}

impl fmt::Display for FieldSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let esc = |v: &str| {
            v.replace('\\', "\\\\")
                .replace(',', "\\,")
                .replace('=', "\\=")
                .replace('!', "\\!")
        };
        let parts: Vec<String> = self
            .requirements
            .iter()
            .map(|r| {
                let op = match r.op {
                    FieldOp::Equals => "=",
                    FieldOp::NotEquals => "!=",
                };
                format!("{}{op}{}", r.field, esc(&r.value))
            })
            .collect();
        write!(f, "{}", parts.join(","))
    }
}

#[cfg(test)]
mod tests;
