//! One-off generator for `src/etcd/generated/` (see `../README.md`; run by `../generate.sh`).
//!
//! Compiles etcd's upstream `rpc.proto` with protox (a pure-Rust protobuf compiler, so no
//! `protoc`), keeps only the RPCs Kelp calls and the messages they reach, and writes the
//! client-only Rust code with tonic-prost-build.
//!
//! Usage: `etcdgen PROTO_DIR OUT_DIR`

use std::collections::{BTreeMap, BTreeSet};

use prost_types::{DescriptorProto, FileDescriptorSet};

/// Service name → the RPCs kept.
const KEEP: &[(&str, &[&str])] = &[
    ("KV", &["Range", "Put", "DeleteRange", "Txn", "Compact"]),
    ("Watch", &["Watch"]),
    ("Maintenance", &["Status"]),
];

/// `.pkg.Msg.Nested` → `.pkg.Msg` given the set of top-level names.
fn top_level(name: &str, tops: &BTreeSet<String>) -> Option<String> {
    let mut cut = name.to_string();
    loop {
        if tops.contains(&cut) {
            return Some(cut);
        }
        let i = cut.rfind('.')?;
        if i == 0 {
            return None;
        }
        cut.truncate(i);
    }
}

fn field_types(m: &DescriptorProto, out: &mut Vec<String>) {
    for f in &m.field {
        if let Some(t) = &f.type_name {
            out.push(t.clone());
        }
    }
    for n in &m.nested_type {
        field_types(n, out);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (proto_dir, out_dir) = match args.as_slice() {
        [_, p, o] => (p.clone(), o.clone()),
        _ => panic!("usage: etcdgen PROTO_DIR OUT_DIR"),
    };
    let mut fds: FileDescriptorSet =
        protox::compile(["etcd/api/etcdserverpb/rpc.proto"], [proto_dir]).expect("protox");

    // Every top-level message and enum, by fully-qualified name.
    let mut tops = BTreeSet::new();
    let mut msgs: BTreeMap<String, DescriptorProto> = BTreeMap::new();
    for f in &fds.file {
        let pkg = f.package();
        for m in &f.message_type {
            let n = format!(".{pkg}.{}", m.name());
            tops.insert(n.clone());
            msgs.insert(n, m.clone());
        }
        for e in &f.enum_type {
            tops.insert(format!(".{pkg}.{}", e.name()));
        }
    }

    // Closure of the kept RPCs' request and response types.
    let mut keep = BTreeSet::new();
    let mut todo = Vec::new();
    for f in &fds.file {
        for s in &f.service {
            let Some((_, methods)) = KEEP.iter().find(|(n, _)| *n == s.name()) else {
                continue;
            };
            for m in &s.method {
                if methods.contains(&m.name()) {
                    todo.push(m.input_type().to_string());
                    todo.push(m.output_type().to_string());
                }
            }
        }
    }
    while let Some(t) = todo.pop() {
        let Some(top) = top_level(&t, &tops) else {
            panic!("unknown type {t}")
        };
        if !keep.insert(top.clone()) {
            continue;
        }
        if let Some(m) = msgs.get(&top) {
            let mut refs = Vec::new();
            field_types(m, &mut refs);
            todo.extend(refs);
        }
    }

    // Prune services, methods, messages and enums, remapping the source locations (which
    // carry the doc comments) to the new indices; then drop files left empty.
    for f in &mut fds.file {
        let pkg = f.package().to_string();
        let kept_idx = |names: Vec<String>| -> Vec<Option<i32>> {
            let mut next = 0;
            names
                .iter()
                .map(|n| {
                    keep.contains(&format!(".{pkg}.{n}")).then(|| {
                        next += 1;
                        next - 1
                    })
                })
                .collect()
        };
        let msg_map = kept_idx(f.message_type.iter().map(|m| m.name().to_string()).collect());
        let enum_map = kept_idx(f.enum_type.iter().map(|e| e.name().to_string()).collect());
        let mut svc_map = Vec::new();
        let mut method_maps = Vec::new();
        let mut next_svc = 0;
        for s in &f.service {
            let methods = KEEP.iter().find(|(n, _)| *n == s.name()).map(|k| k.1);
            svc_map.push(methods.map(|_| {
                next_svc += 1;
                next_svc - 1
            }));
            let mut next = 0;
            method_maps.push(
                s.method
                    .iter()
                    .map(|m| {
                        methods.filter(|ms| ms.contains(&m.name())).map(|_| {
                            next += 1;
                            next - 1
                        })
                    })
                    .collect::<Vec<_>>(),
            );
        }
        if let Some(info) = f.source_code_info.as_mut() {
            info.location.retain_mut(|loc| {
                let p = &mut loc.path;
                if p.len() < 2 {
                    return p.first().is_some_and(|k| *k != 8);
                }
                let map = match p[0] {
                    4 => &msg_map,
                    5 => &enum_map,
                    6 => &svc_map,
                    3 | 8 | 10 | 11 => return false,
                    _ => return true,
                };
                let old = p[1] as usize;
                let Some(new) = map.get(old).copied().flatten() else {
                    return false;
                };
                p[1] = new;
                if p[0] == 6 && p.len() >= 4 && p[2] == 2 {
                    match method_maps[old].get(p[3] as usize).copied().flatten() {
                        Some(m) => p[3] = m,
                        None => return false,
                    }
                }
                true
            });
        }
        f.message_type
            .retain(|m| keep.contains(&format!(".{pkg}.{}", m.name())));
        f.enum_type
            .retain(|e| keep.contains(&format!(".{pkg}.{}", e.name())));
        f.service
            .retain(|s| KEEP.iter().any(|(n, _)| *n == s.name()));
        for s in &mut f.service {
            let methods = KEEP.iter().find(|(n, _)| *n == s.name()).map(|k| k.1).unwrap_or(&[]);
            s.method.retain(|m| methods.contains(&m.name()));
        }
        // Options carry grpc-gateway and etcd-version extensions Kelp does not use.
        f.options = None;
    }
    fds.file
        .retain(|f| !f.message_type.is_empty() || !f.enum_type.is_empty() || !f.service.is_empty());
    let names: BTreeSet<String> = fds.file.iter().map(|f| f.name().to_string()).collect();
    for f in &mut fds.file {
        f.dependency.retain(|d| names.contains(d));
        f.public_dependency.clear();
        f.weak_dependency.clear();
    }
    eprintln!("kept files: {names:?}");
    eprintln!("kept types: {keep:?}");

    tonic_prost_build::configure()
        .build_server(false)
        .build_transport(false)
        .out_dir(out_dir)
        .compile_fds(fds)
        .expect("generate");
}
