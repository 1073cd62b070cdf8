use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::*;

fn labels(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

#[test]
fn label_grammar_matches() {
    let l = labels(
        json!({"app": "web", "tier": "fe", "env": "prod", "n": "5", "example.com/team": "a"}),
    );
    let cases = [
        ("", true),
        ("   ", true),
        ("app=web", true),
        ("app==web", true),
        ("app = web", true),
        ("app!=web", false),
        ("app!=db", true),
        ("app=web,tier!=x", true),
        ("app=web, tier=be", false),
        ("env in (prod, dev)", true),
        ("env in (dev)", false),
        ("env in(prod)", true),
        ("env notin (prod)", false),
        ("env notin (dev,qa)", true),
        ("missing notin (x)", true),
        ("missing in (x)", false),
        ("app", true),
        ("!app", false),
        ("! app", false),
        ("!missing", true),
        ("missing!=x", true),
        ("missing=", false),
        ("n>3", true),
        ("n<3", false),
        ("missing>3", false),
        ("example.com/team=a", true),
        ("example.com/team in (b)", false),
        ("app=web,!missing,env,tier in (fe),n>4", true),
        ("in=x", false),
    ];
    for (s, want) in cases {
        let sel = LabelSelector::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(sel.matches_value(Some(&l)), want, "{s}");
    }
    // No labels at all.
    assert!(LabelSelector::parse("!app").unwrap().matches_value(None));
    assert!(!LabelSelector::parse("app").unwrap().matches_value(None));
    let map: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
    assert!(LabelSelector::parse("app in (web,db)")
        .unwrap()
        .matches(&map));
    assert!(!LabelSelector::parse("app notin (web,db)")
        .unwrap()
        .matches(&map));
}

#[test]
fn label_parse_structure() {
    let sel = LabelSelector::parse("tier notin (b, a), app=web, !x, y, n>1").unwrap();
    let keys: Vec<&str> = sel.requirements.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, ["app", "n", "tier", "x", "y"]);
    assert_eq!(sel.to_string(), "app=web,n>1,tier notin (a,b),!x,y");
    // Empty value sets and items behave like upstream.
    let sel = LabelSelector::parse("a in (),b in (x,,y),c=").unwrap();
    assert_eq!(sel.requirements[0].values, [String::new()].into());
    assert_eq!(
        sel.requirements[1].values,
        ["".to_string(), "x".into(), "y".into()].into()
    );
    assert_eq!(sel.requirements[2].values, [String::new()].into());
    assert_eq!(sel.requirements[2].op, Op::Equals);
    assert_eq!(
        LabelSelector::parse("a==b").unwrap().requirements[0].op,
        Op::DoubleEquals
    );
}

#[test]
fn label_errors() {
    let cases = [
        ("app=we b", "found 'b', expected: ',' or 'end of string'"),
        ("a in b", "found 'b', expected: '('"),
        ("a in (b", "found '', expected: ')'"),
        ("a in (b c)", "found 'c', expected: ',' or ')'"),
        ("a in (=)", "found '=', expected: ',', ')' or identifier"),
        ("=x", "found '=', expected: !, identifier, or 'end of string'"),
        ("app=web,", "found '', expected: identifier after ','"),
        (",app", "found ',', expected: !, identifier, or 'end of string'"),
        ("app=web,,x", "found ',', expected: identifier after ','"),
        ("!", "found '', expected: identifier"),
        ("!a=b", "found '=', expected: ',' or 'end of string'"),
        ("a b", "found 'b', expected: in, notin, =, ==, !=, gt, lt"),
        ("a=(b)", "found '(', expected: identifier"),
        ("a>b", "values[0]: Invalid value: \"b\": for 'Gt', 'Lt' operators, the value must be an integer"),
        ("a)", "found ')', expected: in, notin, =, ==, !=, gt, lt"),
    ];
    for (s, want) in cases {
        let e = LabelSelector::parse(s).unwrap_err();
        assert_eq!(e.to_string(), want, "{s}");
    }
    // Key and value syntax.
    let e = LabelSelector::parse("ap$p=x").unwrap_err().to_string();
    assert!(
        e.starts_with("key: Invalid value: \"ap$p\": name part must consist of"),
        "{e}"
    );
    let e = LabelSelector::parse("a/b/c").unwrap_err().to_string();
    assert!(e.contains("a qualified name must consist of"), "{e}");
    let e = LabelSelector::parse("Example.com/x")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("prefix part a lowercase RFC 1123 subdomain"),
        "{e}"
    );
    let e = LabelSelector::parse("/x").unwrap_err().to_string();
    assert!(e.contains("prefix part must be non-empty"), "{e}");
    let long = "k".repeat(64);
    let e = LabelSelector::parse(&long).unwrap_err().to_string();
    assert!(
        e.contains("name part must be no more than 63 characters"),
        "{e}"
    );
    let e = LabelSelector::parse("app=-web").unwrap_err().to_string();
    assert!(
        e.starts_with("values[0][app]: Invalid value: \"-web\": a valid label must be"),
        "{e}"
    );
    let e = LabelSelector::parse(&format!("app={}", "v".repeat(64)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("must be no more than 63 characters"), "{e}");
    let e = LabelSelector::parse("app in (ok, no!)")
        .unwrap_err()
        .to_string();
    assert!(e.contains("expected"), "{e}");
}

#[test]
fn label_selector_json() {
    let l = |v: Value| labels(v);
    let sel = LabelSelector::from_label_selector_json(&json!({
    "matchLabels": {"app": "web"},
    "matchExpressions": [
        {"key": "tier", "operator": "In", "values": ["fe", "be"]},
        {"key": "env", "operator": "NotIn", "values": ["dev"]},
        {"key": "track", "operator": "Exists"},
        {"key": "legacy", "operator": "DoesNotExist"}
    ]}))
    .unwrap();
    assert!(sel.matches_value(Some(&l(json!({"app": "web", "tier": "fe", "track": "x"})))));
    assert!(!sel.matches_value(Some(&l(json!({"app": "web", "tier": "fe"})))));
    assert!(!sel.matches_value(Some(&l(
        json!({"app": "web", "tier": "fe", "track": "x", "env": "dev"})
    ))));
    assert!(!sel.matches_value(Some(&l(
        json!({"app": "web", "tier": "fe", "track": "x", "legacy": "1"})
    ))));
    assert_eq!(
        sel.to_string(),
        "app=web,env notin (dev),!legacy,tier in (be,fe),track"
    );
    // {} selects everything, null nothing.
    let all = LabelSelector::from_label_selector_json(&json!({})).unwrap();
    assert!(all.is_empty() && all.matches_value(None));
    let none = LabelSelector::from_label_selector_json(&Value::Null).unwrap();
    assert!(none.is_nothing() && !none.matches_value(Some(&l(json!({"a": "b"})))));
    // Errors.
    let bad = [
        (json!({"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["x"]}]}), "\"Equals\" is not a valid label selector operator"),
        (json!({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}), "values: Invalid value: []: for 'in', 'notin' operators, values set can't be empty"),
        (json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}), "values: Invalid value: [\"x\"]: values set must be empty for exists and does not exist"),
        (json!({"matchLabels": {"a": 1}}), "matchLabels[a]: Invalid value: 1: must be a string"),
        (json!({"matchLabels": {"a b": "c"}}), ""),
        (json!([1]), ""),
    ];
    for (v, want) in bad {
        let e = LabelSelector::from_label_selector_json(&v)
            .unwrap_err()
            .to_string();
        if !want.is_empty() {
            assert_eq!(e, want, "{v}");
        }
    }
}

#[test]
fn field_selectors() {
    let get = |f: &str| match f {
        "metadata.name" => Some("x".to_string()),
        "metadata.namespace" => Some("default".to_string()),
        "status.phase" => Some("Running".to_string()),
        "spec.nodeName" => Some("n1".to_string()),
        "weird" => Some("a,b=c".to_string()),
        _ => None,
    };
    let cases = [
        ("", true),
        ("metadata.name=x", true),
        ("metadata.name==x", true),
        ("metadata.name!=x", false),
        ("metadata.name=y", false),
        ("status.phase!=Succeeded,status.phase!=Failed", true),
        ("spec.nodeName=n1,metadata.namespace=default", true),
        ("spec.nodeName=n2,metadata.namespace=default", false),
        ("involvedObject.namespace=", true),
        ("involvedObject.namespace!=", false),
        ("metadata.name=", false),
        ("weird=a\\,b\\=c", true),
        (" metadata.name = x ,", true),
    ];
    for (s, want) in cases {
        let fs = FieldSelector::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(fs.matches(&get), want, "{s}");
    }
    let fs = FieldSelector::parse("metadata.name=x,status.phase!=Failed,involvedObject.namespace=")
        .unwrap();
    assert_eq!(
        fs.fields().collect::<Vec<_>>(),
        ["metadata.name", "status.phase", "involvedObject.namespace"]
    );
    assert_eq!(
        fs.requirements()[1],
        FieldRequirement {
            field: "status.phase".into(),
            op: FieldOp::NotEquals,
            value: "Failed".into()
        }
    );
    assert_eq!(fs.exact("metadata.name"), Some("x"));
    assert_eq!(fs.exact("status.phase"), None);
    assert_eq!(
        fs.to_string(),
        "metadata.name=x,status.phase!=Failed,involvedObject.namespace="
    );
    assert_eq!(
        FieldSelector::parse("weird=a\\,b").unwrap().to_string(),
        "weird=a\\,b"
    );
    for bad in ["nonsense", "=x", "a=b=c", "a=b\\q", "a=b\\"] {
        assert!(FieldSelector::parse(bad).is_err(), "{bad}");
    }
    assert_eq!(
        FieldSelector::parse("nonsense").unwrap_err().to_string(),
        "invalid selector: 'nonsense'; can't understand 'nonsense'"
    );
}
