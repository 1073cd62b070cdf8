//! The Kelp API server.
