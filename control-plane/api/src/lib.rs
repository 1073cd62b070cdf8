//! Kubernetes API machinery with no I/O: the resource registry, validation and
//! defaulting, patch strategies, selectors, protobuf request decoding, OpenAPI
//! documents and table printing.
//!
//! May depend on k8s-openapi/k8s-pb types; must not depend on storage or HTTP.

pub mod builtin;
pub mod defaults;
pub mod duplicates;
pub mod fields;
pub mod openapi;
pub mod patch;
pub mod protobuf;
pub mod registry;
pub mod selector;
pub mod table;
pub mod typecheck;
pub mod validation;
