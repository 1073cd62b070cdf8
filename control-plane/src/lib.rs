//! Kelp control plane: the API server on a store, and (later) scheduler and controllers.
pub use kelp_api as api;
pub use kelp_apiserver as apiserver;
pub use kelp_storage as storage;
