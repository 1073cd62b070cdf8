//! List and watch filtering by label and field selectors.

use serde_json::Value;

use kelp_api::fields::field_value;
use kelp_api::registry::ResourceInfo;
use kelp_api::selector::{FieldSelector, LabelSelector};

use crate::error::{ApiError, ApiResult};
use crate::request::Query;

#[derive(Debug, Default)]
pub struct Filter {
    labels: Option<LabelSelector>,
    fields: Option<FieldSelector>,
}

impl Filter {
    pub fn from_query(info: &ResourceInfo, q: &Query) -> ApiResult<Self> {
        let labels =
            match q.get("labelSelector") {
                Some(s) => Some(LabelSelector::parse(s).map_err(|e| {
                    ApiError::bad_request(format!("unable to parse requirement: {e}"))
                })?),
                None => None,
            };
        let fields = match q.get("fieldSelector") {
            Some(s) => {
                let fs =
                    FieldSelector::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))?;
                for field in fs.fields() {
                    if field_value(&info.gvk, &Value::Null, field).is_err() {
                        return Err(ApiError::bad_request(format!(
                            "field label not supported: {field}"
                        )));
                    }
                }
                Some(fs)
            }
            None => None,
        };
        Ok(Filter { labels, fields })
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_none() && self.fields.is_none()
    }

    pub fn matches(&self, info: &ResourceInfo, obj: &Value) -> bool {
        if let Some(ls) = &self.labels {
            let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
            if !ls.matches_value(labels) {
                return false;
            }
        }
        if let Some(fs) = &self.fields {
            let get = |f: &str| field_value(&info.gvk, obj, f).ok();
            if !fs.matches(&get) {
                return false;
            }
        }
        true
    }
}
