//! CRI runtime for OCI-packaged WebAssembly on wasmtime.
