//! Kelp node agent (kubelet, CRI routing, proxy). Never depends on the control plane crates.
