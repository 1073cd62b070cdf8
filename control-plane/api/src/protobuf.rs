//! Kubernetes protobuf request bodies, decoded to the JSON the same object has.
//!
//! kubectl sends only protobuf for its generators (`create namespace|configmap|secret|
//! deployment|…`) and for `auth can-i`. A body is the magic `k8s\0` and a
//! `runtime.Unknown` envelope whose `raw` is the object's message. The decoder is
//! generic: it walks the wire format with the schema of every built-in message
//! (`protobuf/schema.json`, generated from the k8s-pb crate's sources by
//! `scripts/gen_pb_schema.py`, with JSON names from k8s-openapi), and renders the
//! well-known types (Time, Quantity, IntOrString, RawExtension…) as their JSON forms.

use std::collections::HashMap;
use std::sync::OnceLock;

use base64::Engine;
use serde::Deserialize;
use serde_json::{Map, Value};

const MAGIC: &[u8] = b"k8s\0";
const MAX_DEPTH: usize = 100;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtobufError {
    #[error("not a Kubernetes protobuf body (missing the k8s magic prefix)")]
    BadMagic,
    #[error("truncated or malformed protobuf")]
    Malformed,
    #[error("field {field} of {message} has wire type {wire}, expected another")]
    WireType {
        message: String,
        field: String,
        wire: u8,
    },
    #[error("no protobuf message is known for {0}")]
    UnknownKind(String),
    #[error("messages nested too deeply")]
    TooDeep,
}

#[derive(Debug, Deserialize)]
struct FieldDef {
    tag: u32,
    name: String,
    #[serde(rename = "type")]
    ty: String,
    #[serde(default)]
    repeated: bool,
    #[serde(default)]
    map: bool,
    message: Option<String>,
}

type Schema = HashMap<String, HashMap<u32, FieldDef>>;

fn schema() -> &'static Schema {
    static S: OnceLock<Schema> = OnceLock::new();
    S.get_or_init(|| {
        let raw: HashMap<String, Vec<FieldDef>> =
            serde_json::from_str(include_str!("protobuf/schema.json")).unwrap_or_default();
        raw.into_iter()
            .map(|(k, fields)| (k, fields.into_iter().map(|f| (f.tag, f)).collect()))
            .collect()
    })
}

/// One field as it appears on the wire.
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Result<u64, ProtobufError> {
        let mut v: u64 = 0;
        for shift in (0..70).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or(ProtobufError::Malformed)?;
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err(ProtobufError::Malformed);
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ProtobufError::Malformed)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtobufError> {
        let end = self.pos.checked_add(n).ok_or(ProtobufError::Malformed)?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(ProtobufError::Malformed)?;
        self.pos = end;
        Ok(s)
    }

    fn field(&mut self) -> Result<(u32, u8, Wire<'a>), ProtobufError> {
        let key = self.varint()?;
        let tag = u32::try_from(key >> 3).map_err(|_| ProtobufError::Malformed)?;
        let wt = (key & 7) as u8;
        let w = match wt {
            0 => Wire::Varint(self.varint()?),
            1 => Wire::Fixed64(u64::from_le_bytes(
                self.take(8)?
                    .try_into()
                    .map_err(|_| ProtobufError::Malformed)?,
            )),
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| ProtobufError::Malformed)?;
                Wire::Bytes(self.take(n)?)
            }
            5 => Wire::Fixed32(u32::from_le_bytes(
                self.take(4)?
                    .try_into()
                    .map_err(|_| ProtobufError::Malformed)?,
            )),
            _ => return Err(ProtobufError::Malformed),
        };
        Ok((tag, wt, w))
    }
}

/// Decodes a whole request body (magic + `runtime.Unknown`) into the object's JSON.
pub fn decode_to_json(body: &[u8]) -> Result<Value, ProtobufError> {
    let rest = body.strip_prefix(MAGIC).ok_or(ProtobufError::BadMagic)?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    let mut r = Reader::new(rest);
    while !r.done() {
        match r.field()? {
            (1, _, Wire::Bytes(tm)) => {
                let mut t = Reader::new(tm);
                while !t.done() {
                    match t.field()? {
                        (1, _, Wire::Bytes(s)) => {
                            api_version = String::from_utf8_lossy(s).into_owned()
                        }
                        (2, _, Wire::Bytes(s)) => kind = String::from_utf8_lossy(s).into_owned(),
                        _ => {}
                    }
                }
            }
            (2, _, Wire::Bytes(b)) => raw = b,
            _ => {}
        }
    }
    let name = message_for(&api_version, &kind)
        .ok_or_else(|| ProtobufError::UnknownKind(format!("{api_version}, Kind={kind}")))?;
    let mut obj = Map::new();
    obj.insert("apiVersion".into(), Value::String(api_version));
    obj.insert("kind".into(), Value::String(kind));
    if let Value::Object(m) = decode_message(&name, raw, 0)? {
        obj.extend(m);
    }
    Ok(Value::Object(obj))
}

/// The protobuf message name of a kind (`apps/v1`, `Deployment` → `api.apps.v1.Deployment`).
pub fn message_for(api_version: &str, kind: &str) -> Option<String> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let s = schema();
    let direct = match group {
        "" => format!("api.core.{version}.{kind}"),
        "meta.k8s.io" => format!("apimachinery.pkg.apis.meta.{version}.{kind}"),
        g => format!("api.{}.{version}.{kind}", g.split('.').next().unwrap_or(g)),
    };
    if s.contains_key(&direct) {
        return Some(direct);
    }
    let first = group.split('.').next().unwrap_or(group);
    let suffix = format!(".{version}.{kind}");
    let mut hits: Vec<&String> = s
        .keys()
        .filter(|k| k.ends_with(&suffix) && k.contains(first))
        .collect();
    hits.sort();
    hits.first().map(|h| h.to_string())
}

fn time_json(seconds: i64, nanos: i64, micro: bool) -> Value {
    let t = chrono::DateTime::from_timestamp(seconds, u32::try_from(nanos.max(0)).unwrap_or(0))
        .unwrap_or_default();
    let s = if micro {
        t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
    } else {
        t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
    };
    Value::String(s)
}

/// Go's `time.Duration.String()`.
pub fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let neg = nanos < 0;
    let n = nanos.unsigned_abs();
    let trim = |whole: u64, frac: u64, digits: usize| -> String {
        if frac == 0 {
            whole.to_string()
        } else {
            let f = format!("{frac:0digits$}");
            format!("{whole}.{}", f.trim_end_matches('0'))
        }
    };
    let s = if n < 1_000 {
        format!("{n}ns")
    } else if n < 1_000_000 {
        format!("{}µs", trim(n / 1_000, n % 1_000, 3))
    } else if n < 1_000_000_000 {
        format!("{}ms", trim(n / 1_000_000, n % 1_000_000, 6))
    } else {
        let total_s = n / 1_000_000_000;
        let frac = n % 1_000_000_000;
        let (h, m, s) = (total_s / 3600, (total_s % 3600) / 60, total_s % 60);
        let secs = format!("{}s", trim(s, frac, 9));
        if h > 0 {
            format!("{h}h{m}m{secs}")
        } else if m > 0 {
            format!("{m}m{secs}")
        } else {
            secs
        }
    };
    if neg {
        format!("-{s}")
    } else {
        s
    }
}

fn raw_json(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)))
}

fn scalar(
    msg: &str,
    f: &FieldDef,
    wt: u8,
    w: &Wire<'_>,
    depth: usize,
) -> Result<Value, ProtobufError> {
    let mismatch = || ProtobufError::WireType {
        message: msg.to_string(),
        field: f.name.clone(),
        wire: wt,
    };
    Ok(match (f.ty.as_str(), w) {
        ("string", Wire::Bytes(b)) => Value::String(String::from_utf8_lossy(b).into_owned()),
        ("bytes", Wire::Bytes(b)) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        ("bool", Wire::Varint(v)) => Value::Bool(*v != 0),
        ("int32", Wire::Varint(v)) => Value::from(*v as i64 as i32),
        ("int64", Wire::Varint(v)) => Value::from(*v as i64),
        ("double", Wire::Fixed64(v)) => serde_json::Number::from_f64(f64::from_bits(*v))
            .map(Value::Number)
            .unwrap_or(Value::Null),
        ("float", Wire::Fixed32(v)) => serde_json::Number::from_f64(f64::from(f32::from_bits(*v)))
            .map(Value::Number)
            .unwrap_or(Value::Null),
        ("message", Wire::Bytes(b)) => {
            decode_message(f.message.as_deref().unwrap_or(""), b, depth + 1)?
        }
        _ => return Err(mismatch()),
    })
}

fn decode_message(name: &str, bytes: &[u8], depth: usize) -> Result<Value, ProtobufError> {
    if depth > MAX_DEPTH {
        return Err(ProtobufError::TooDeep);
    }
    // Well-known types with their own JSON forms.
    match name {
        "apimachinery.pkg.apis.meta.v1.Time" | "apimachinery.pkg.apis.meta.v1.MicroTime" => {
            let (mut s, mut n) = (0i64, 0i64);
            let mut r = Reader::new(bytes);
            while !r.done() {
                match r.field()? {
                    (1, _, Wire::Varint(v)) => s = v as i64,
                    (2, _, Wire::Varint(v)) => n = v as i64,
                    _ => {}
                }
            }
            // Go encodes a zero time (JSON `null`) as 0 seconds.
            if s == 0 && n == 0 {
                return Ok(Value::Null);
            }
            return Ok(time_json(s, n, name.ends_with("MicroTime")));
        }
        "apimachinery.pkg.apis.meta.v1.Duration" => {
            let mut d = 0i64;
            let mut r = Reader::new(bytes);
            while !r.done() {
                if let (1, _, Wire::Varint(v)) = r.field()? {
                    d = v as i64;
                }
            }
            return Ok(Value::String(go_duration(d)));
        }
        "apimachinery.pkg.util.intstr.IntOrString" => {
            let (mut t, mut i, mut s) = (0u64, 0i64, String::new());
            let mut r = Reader::new(bytes);
            while !r.done() {
                match r.field()? {
                    (1, _, Wire::Varint(v)) => t = v,
                    (2, _, Wire::Varint(v)) => i = i64::from(v as i64 as i32),
                    (3, _, Wire::Bytes(b)) => s = String::from_utf8_lossy(b).into_owned(),
                    _ => {}
                }
            }
            return Ok(if t == 1 {
                Value::String(s)
            } else {
                Value::from(i)
            });
        }
        "apimachinery.pkg.api.resource.Quantity" => {
            let mut s = String::new();
            let mut r = Reader::new(bytes);
            while !r.done() {
                if let (1, _, Wire::Bytes(b)) = r.field()? {
                    s = String::from_utf8_lossy(b).into_owned();
                }
            }
            return Ok(Value::String(s));
        }
        "apimachinery.pkg.runtime.RawExtension"
        | "apimachinery.pkg.apis.meta.v1.FieldsV1"
        | "apiextensions_apiserver.pkg.apis.apiextensions.v1.JSON" => {
            let mut raw: &[u8] = &[];
            let mut r = Reader::new(bytes);
            while !r.done() {
                if let (1, _, Wire::Bytes(b)) = r.field()? {
                    raw = b;
                }
            }
            return Ok(raw_json(raw));
        }
        _ => {}
    }
    let fields = schema()
        .get(name)
        .ok_or_else(|| ProtobufError::UnknownKind(name.to_string()))?;
    let mut out = Map::new();
    let mut r = Reader::new(bytes);
    while !r.done() {
        let (tag, wt, w) = r.field()?;
        let Some(f) = fields.get(&tag) else { continue };
        if f.map {
            let Wire::Bytes(entry) = w else {
                return Err(ProtobufError::WireType {
                    message: name.into(),
                    field: f.name.clone(),
                    wire: wt,
                });
            };
            let (mut k, mut v) = (String::new(), Value::Null);
            let mut er = Reader::new(entry);
            while !er.done() {
                match er.field()? {
                    (1, _, Wire::Bytes(b)) => k = String::from_utf8_lossy(b).into_owned(),
                    (2, vwt, vw) => v = scalar(name, f, vwt, &vw, depth)?,
                    _ => {}
                }
            }
            if v.is_null() {
                v = match f.ty.as_str() {
                    "message" => {
                        decode_message(f.message.as_deref().unwrap_or(""), &[], depth + 1)?
                    }
                    _ => Value::String(String::new()),
                };
            }
            let m = out
                .entry(f.name.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Some(m) = m.as_object_mut() {
                m.insert(k, v);
            }
        } else if f.repeated {
            let arr = out
                .entry(f.name.clone())
                .or_insert_with(|| Value::Array(Vec::new()));
            let Some(arr) = arr.as_array_mut() else {
                continue;
            };
            match (&w, f.ty.as_str()) {
                // Packed numeric lists.
                (Wire::Bytes(b), "int32" | "int64" | "bool") => {
                    let mut pr = Reader::new(b);
                    while !pr.done() {
                        let v = pr.varint()?;
                        arr.push(scalar(name, f, 0, &Wire::Varint(v), depth)?);
                    }
                }
                _ => arr.push(scalar(name, f, wt, &w, depth)?),
            }
        } else {
            // Go's encoder writes non-pointer fields even when empty; JSON omits them
            // (`omitempty`), and so must we, or "" would fail enum validation.
            match scalar(name, f, wt, &w, depth)? {
                Value::Null => {}
                Value::String(s) if s.is_empty() && f.ty == "string" => {}
                v => {
                    out.insert(f.name.clone(), v);
                }
            }
        }
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_pb::api::apps::v1 as apps;
    use k8s_pb::api::core::v1 as core;
    use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
    use prost::Message;
    use serde_json::json;

    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown {
            type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        let mut out = MAGIC.to_vec();
        out.extend(unknown.encode_to_vec());
        out
    }

    fn meta(name: &str) -> Option<meta::ObjectMeta> {
        Some(meta::ObjectMeta {
            name: Some(name.into()),
            labels: [("app".to_string(), "web".to_string())].into(),
            creation_timestamp: Some(meta::Time {
                seconds: Some(1_700_000_000),
                nanos: Some(0),
            }),
            ..Default::default()
        })
    }

    #[test]
    fn deployment() {
        let d = apps::Deployment {
            metadata: meta("web"),
            spec: Some(apps::DeploymentSpec {
                replicas: Some(3),
                selector: Some(meta::LabelSelector {
                    match_labels: [("app".to_string(), "web".to_string())].into(),
                    ..Default::default()
                }),
                template: Some(core::PodTemplateSpec {
                    metadata: meta("x"),
                    spec: Some(core::PodSpec {
                        containers: vec![core::Container {
                            name: Some("web".into()),
                            image: Some("nginx:1.25".into()),
                            ports: vec![core::ContainerPort {
                                container_port: Some(80),
                                ..Default::default()
                            }],
                            resources: Some(core::ResourceRequirements {
                                limits: [(
                                    "memory".to_string(),
                                    k8s_pb::apimachinery::pkg::api::resource::Quantity {
                                        string: Some("64Mi".into()),
                                    },
                                )]
                                .into(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                }),
                strategy: Some(apps::DeploymentStrategy {
                    r#type: Some("RollingUpdate".into()),
                    rolling_update: Some(apps::RollingUpdateDeployment {
                        max_surge: Some(k8s_pb::apimachinery::pkg::util::intstr::IntOrString {
                            r#type: Some(1),
                            int_val: None,
                            str_val: Some("25%".into()),
                        }),
                        max_unavailable: Some(
                            k8s_pb::apimachinery::pkg::util::intstr::IntOrString {
                                r#type: Some(0),
                                int_val: Some(1),
                                str_val: None,
                            },
                        ),
                    }),
                }),
                ..Default::default()
            }),
            status: None,
        };
        let v = decode_to_json(&envelope("apps/v1", "Deployment", d.encode_to_vec())).unwrap();
        assert_eq!(v["apiVersion"], "apps/v1");
        assert_eq!(v["metadata"]["creationTimestamp"], "2023-11-14T22:13:20Z");
        assert_eq!(v["spec"]["replicas"], 3);
        assert_eq!(v["spec"]["selector"]["matchLabels"], json!({"app": "web"}));
        assert_eq!(
            v["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"],
            80
        );
        assert_eq!(
            v["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"],
            "64Mi"
        );
        assert_eq!(
            v["spec"]["strategy"]["rollingUpdate"],
            json!({"maxSurge": "25%", "maxUnavailable": 1})
        );
        let typed: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(v).unwrap();
        assert_eq!(typed.spec.unwrap().replicas, Some(3));
    }

    #[test]
    fn secret_bytes_and_pod_status_names() {
        let s = core::Secret {
            metadata: meta("s"),
            data: [("k".to_string(), b"v\x00".to_vec())].into(),
            r#type: Some("Opaque".into()),
            ..Default::default()
        };
        let v = decode_to_json(&envelope("v1", "Secret", s.encode_to_vec())).unwrap();
        assert_eq!(v["data"]["k"], "dgA=");
        let p = core::Pod {
            metadata: meta("p"),
            spec: None,
            status: Some(core::PodStatus {
                host_ip: Some("10.0.0.1".into()),
                pod_ips: vec![core::PodIp {
                    ip: Some("10.1.0.5".into()),
                }],
                ..Default::default()
            }),
        };
        let v = decode_to_json(&envelope("v1", "Pod", p.encode_to_vec())).unwrap();
        assert_eq!(v["status"]["hostIP"], "10.0.0.1");
        assert_eq!(v["status"]["podIPs"], json!([{"ip": "10.1.0.5"}]));
    }

    #[test]
    fn access_review_and_unknown_kinds() {
        let r = k8s_pb::api::authorization::v1::SelfSubjectAccessReview {
            metadata: None,
            spec: Some(
                k8s_pb::api::authorization::v1::SelfSubjectAccessReviewSpec {
                    resource_attributes: Some(k8s_pb::api::authorization::v1::ResourceAttributes {
                        namespace: Some("default".into()),
                        verb: Some("create".into()),
                        group: Some("apps".into()),
                        resource: Some("deployments".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ),
            status: None,
        };
        let v = decode_to_json(&envelope(
            "authorization.k8s.io/v1",
            "SelfSubjectAccessReview",
            r.encode_to_vec(),
        ))
        .unwrap();
        assert_eq!(v["spec"]["resourceAttributes"]["resource"], "deployments");
        assert!(matches!(
            decode_to_json(&envelope("x.io/v1", "Nope", vec![])),
            Err(ProtobufError::UnknownKind(_))
        ));
        assert_eq!(decode_to_json(b"{}"), Err(ProtobufError::BadMagic));
    }

    #[test]
    fn hostile_input_never_panics() {
        let d = apps::Deployment {
            metadata: meta("web"),
            ..Default::default()
        };
        let good = envelope("apps/v1", "Deployment", d.encode_to_vec());
        for cut in 0..good.len() {
            let _ = decode_to_json(&good[..cut]);
        }
        let mut seed: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..2000 {
            let mut body = MAGIC.to_vec();
            for _ in 0..(seed % 64) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                body.push(seed as u8);
            }
            let _ = decode_to_json(&body);
        }
    }

    #[test]
    fn durations() {
        assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
        assert_eq!(go_duration(1_500_000_000), "1.5s");
        assert_eq!(go_duration(300_000_000), "300ms");
    }
}
