#!/usr/bin/env python3
"""Generates control-plane/api/src/protobuf/schema.json: the wire schema of every
Kubernetes protobuf message, for the generic decoder in protobuf.rs.

Field tags and types come from the k8s-pb crate's prost-generated sources; the exact
JSON field names (which prost's snake_case loses, e.g. `podIPs`) come from
k8s-openapi's serde impls. Run from the repository root:

    python3 control-plane/api/scripts/gen_pb_schema.py \
        ~/.cargo/registry/src/*/k8s-pb-0.9.0/src ~/.cargo/registry/src/*/k8s-openapi-0.29.0/src/v1_33
"""
import json
import os
import re
import sys

pb_root, oa_root = sys.argv[1], sys.argv[2]

# Every JSON key k8s-openapi knows, indexed by its letters only (lowercase).
json_names = {}
for d, _, files in os.walk(oa_root):
    for f in files:
        if f.endswith(".rs"):
            for m in re.finditer(r'"([A-Za-z0-9$_\-]+)" => Field::Key_', open(os.path.join(d, f)).read()):
                name = m.group(1)
                json_names.setdefault(re.sub(r"[^a-z0-9]", "", name.lower()), name)


def json_name(rust_name):
    rust_name = rust_name.removeprefix("r#")
    key = re.sub(r"[^a-z0-9]", "", rust_name.lower())
    if key in json_names:
        return json_names[key]
    parts = rust_name.split("_")
    return parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])


def module_of(path):
    rel = os.path.relpath(path, pb_root)
    parts = rel.split(os.sep)[:-1]  # drop mod.rs / lib.rs
    return parts


def resolve(type_path, module):
    type_path = type_path.strip().rstrip(",")
    segs = [s for s in type_path.split("::") if s]
    cur = list(module)
    while segs and segs[0] == "super":
        cur.pop()
        segs.pop(0)
    if segs and segs[0] == "crate":
        cur = []
        segs.pop(0)
    return ".".join(cur + segs)


def inner_type(t):
    t = re.sub(r",>", ">", t.replace(" ", "").replace("\n", ""))
    for wrap in ["::core::option::Option<", "::prost::alloc::vec::Vec<", "::prost::alloc::boxed::Box<", "Option<", "Vec<", "Box<"]:
        while t.startswith(wrap) and t.endswith(">"):
            t = t[len(wrap):-1]
    return t


messages = {}
for d, _, files in os.walk(pb_root):
    for f in files:
        if f != "mod.rs":
            continue
        path = os.path.join(d, f)
        module = module_of(path)
        lines = open(path).read().split("\n")
        current = None
        i = 0
        while i < len(lines):
            line = lines[i].strip()
            m = re.match(r"pub struct (\w+) \{", line)
            if m:
                current = ".".join(module + [m.group(1)])
                messages[current] = []
                i += 1
                continue
            m = re.match(r"#\[prost\((.*)\)\]", line)
            if m and current:
                attr = m.group(1)
                j = i + 1
                decl = ""
                while j < len(lines):
                    decl += lines[j].strip() + " "
                    if decl.count("<") == decl.count(">") and decl.rstrip().endswith(","):
                        break
                    j += 1
                i = j + 1
                fm = re.match(r"pub (r#)?(\w+):\s*(.*),\s*$", decl.strip())
                if not fm:
                    continue
                rust_name, rust_type = fm.group(2), fm.group(3)
                tag = int(re.search(r'tag = "(\d+)"', attr).group(1))
                field = {"tag": tag, "name": json_name(rust_name)}
                mm = re.match(r'(btree_map|hash_map) = "(\w+), (\w+)"', attr)
                if mm:
                    field["map"] = True
                    vkind = mm.group(3)
                    if vkind == "message":
                        t = rust_type.replace(" ", "")
                        vt = t[t.index(",") + 1 : t.rindex(">")]
                        field["type"] = "message"
                        field["message"] = resolve(vt.rstrip(","), module)
                    else:
                        field["type"] = vkind
                else:
                    kind = attr.split(",")[0].strip()
                    if kind.startswith("bytes"):
                        kind = "bytes"
                    field["type"] = kind
                    if "repeated" in attr:
                        field["repeated"] = True
                    if kind == "message":
                        field["message"] = resolve(inner_type(rust_type), module)
                messages[current].append(field)
                continue
            if line == "}":
                current = None if line == "}" and lines[i].startswith("}") else current
            i += 1

out = os.path.join(os.path.dirname(__file__), "..", "src", "protobuf", "schema.json")
with open(out, "w") as fh:
    json.dump(messages, fh, separators=(",", ":"), sort_keys=True)
print(f"{len(messages)} messages -> {out}")
