//! Duplicate keys in a JSON body. serde_json keeps the last value silently, but
//! kube-apiserver's strict decoder reports every repeated key (`duplicate field
//! "spec.replicas"`), an error under `fieldValidation=Strict` and a warning under `Warn`.

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::collections::HashSet;
use std::fmt;

/// Dotted paths of keys that appear more than once in one JSON object of `body`.
/// A body that is not valid JSON yields none; the decoder reports that on its own.
pub fn duplicate_fields(body: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(body);
    let walker = Walk {
        path: String::new(),
        found: &mut found,
    };
    if walker.deserialize(&mut de).is_err() {
        return Vec::new();
    }
    found
}

struct Walk<'a> {
    path: String,
    found: &'a mut Vec<String>,
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0usize;
        loop {
            let path = format!("{}[{i}]", self.path);
            let next = seq.next_element_seed(Walk {
                path,
                found: &mut *self.found,
            })?;
            if next.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.path)
            };
            if !seen.insert(key) {
                self.found.push(path.clone());
            }
            map.next_value_seed(Walk {
                path,
                found: &mut *self.found,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::duplicate_fields;

    #[test]
    fn finds_repeated_keys_at_any_depth() {
        let body = br#"{"data":{"a":"1"},"data":{"b":"2"},"spec":{"x":[{"n":1,"n":2}]}}"#;
        assert_eq!(duplicate_fields(body), vec!["data", "spec.x[0].n"]);
    }

    #[test]
    fn clean_and_invalid_bodies_have_none() {
        assert!(duplicate_fields(br#"{"a":{"a":1},"b":[1,2]}"#).is_empty());
        assert!(duplicate_fields(b"{not json").is_empty());
    }
}
