//! Kubernetes API machinery with no I/O.
