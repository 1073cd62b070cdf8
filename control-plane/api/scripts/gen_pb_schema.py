#!/usr/bin/env python3
"""Generates control-plane/api/src/protobuf/schema.json: the wire schema of every
Kubernetes protobuf message, for the generic decoder in src/protobuf.rs.

Sources, in order of authority:

* the k8s-pb crate's prost-generated sources: every message, field tag and wire type;
* the Go type metadata inside kubectl binaries (Go keeps struct field tags and field
  types for reflection): per field the exact JSON name, `omitempty`, `,inline`, and
  whether the Go field is a pointer (a pointer set to zero is kept in JSON, a plain
  field at zero with `omitempty` is dropped). kubectl links every k8s.io/api group;
* k8s-openapi's serde impls (JSON names, and required = not omitempty) for the few
  messages kubectl does not link (apiextensions, apiregistration, custom metrics, ...);
* a last-resort camelCase of the prost name.

Run from the repository root (kubectl binaries: the Google Cloud SDK bundle's
kubectl.1.33 and kubectl.1.32 beside /usr/bin/kubectl):

    python3 control-plane/api/scripts/gen_pb_schema.py \\
        --k8s-pb ~/.cargo/registry/src/*/k8s-pb-0.9.0/src \\
        --k8s-openapi ~/.cargo/registry/src/*/k8s-openapi-0.29.0/src/v1_33 \\
        --kubectl $(dirname $(readlink -f /usr/bin/kubectl))/kubectl.1.33 \\
        --kubectl $(dirname $(readlink -f /usr/bin/kubectl))/kubectl.1.32

Output format (compact JSON):

    {"messages": {"api.apps.v1.DeploymentSpec": [[tag, jsonName, type, flags, message or null], ...]},
     "kinds": {"apps/v1/deployment": "api.apps.v1.Deployment", ...},
     "lists": ["api.authentication.v1.ExtraValue", ...]}

type is one of string bytes bool int32 int64 double message; flags is a bit set:
1 repeated, 2 map (string keys; type/message describe the value), 4 omitempty,
8 pointer (keep a present zero), 16 inline (merge the message's fields into the parent).
"lists" are messages that Go represents as a plain slice (`ExtraValue []string`): their
JSON is the array of their single repeated field.
"""
import argparse
import json
import os
import re
import struct
import sys

REPEATED, MAP, OMITEMPTY, POINTER, INLINE = 1, 2, 4, 8, 16

# --------------------------------------------------------------------------------------
# Go type metadata from a (static, non-PIE, amd64) Go >= 1.21 binary.
# abi.Type is 48 bytes: size, ptrdata, hash u32, tflag u8, align, fieldAlign, kind u8
# (offset 23), equal, gcdata, str nameOff i32 (40), ptrToThis (44). abi.StructType adds
# PkgPath name (48) and Fields []StructField (56, 64, 72); StructField is {name *byte,
# typ *Type, offset}. An uncommon type (tflag&1) follows at 80 with PkgPath nameOff.
# Names are [flags][uvarint len][bytes] and, if flags&2, [uvarint len][tag].
# --------------------------------------------------------------------------------------
GO_KIND = {1: "bool", 2: "int", 5: "int32", 6: "int64", 8: "uint8", 13: "float32",
           14: "float64", 20: "interface", 21: "map", 22: "ptr", 23: "slice", 24: "string",
           25: "struct", 17: "array"}


def go_structs(path):
    d = open(path, "rb").read()
    shoff, = struct.unpack_from("<Q", d, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", d, 0x3A)
    shs = [struct.unpack_from("<IIQQQQ", d, shoff + i * shentsize) for i in range(shnum)]
    stro = shs[shstrndx][4]
    ro = None
    for name, _typ, _flags, addr, off, size in shs:
        if d[stro + name:d.index(b"\0", stro + name)] == b".rodata":
            ro = (addr, off, size)
    ra, roff, rsize = ro

    def off(a):
        if not ra <= a < ra + rsize:
            raise ValueError(a)
        return a - ra + roff

    def u64(a):
        return struct.unpack_from("<Q", d, off(a))[0]

    def uvarint(o):
        v = s = 0
        while True:
            b = d[o]
            o += 1
            v |= (b & 0x7F) << s
            s += 7
            if b < 0x80:
                return v, o

    def name_at(a):
        o = off(a)
        flags = d[o]
        n, o2 = uvarint(o + 1)
        name = d[o2:o2 + n].decode("latin1")
        tag = ""
        if flags & 2:
            tl, o4 = uvarint(o2 + n)
            tag = d[o4:o4 + tl].decode("latin1")
        return name, tag

    def kind(t):
        return d[off(t) + 23] & 31

    def tname(t):
        so, = struct.unpack_from("<i", d, off(t) + 40)
        n = name_at(ra + so)[0]
        return n[1:] if d[off(t) + 20] & 2 else n

    def desc(t, depth=0):
        k = kind(t)
        kn = GO_KIND.get(k, str(k))
        if depth > 2:
            return kn
        if k in (22, 23):
            return kn + ":" + desc(u64(t + 48), depth + 1)
        if k == 21:
            return "map:" + desc(u64(t + 56), depth + 1)
        return kn

    words = struct.unpack_from("<%dQ" % (rsize // 8), d, roff)
    out = {}
    for i in range(7, len(words) - 3):
        p, ln = words[i], words[i + 1]
        if not (ra <= p < ra + rsize) or ln == 0 or ln > 300 or words[i + 2] != ln:
            continue
        t = ra + (i - 7) * 8
        try:
            if kind(t) != 25 or not d[off(t) + 20] & 1:
                continue
            pko, = struct.unpack_from("<i", d, off(t) + 80)
            pkg = name_at(ra + pko)[0]
            if not pkg.startswith("k8s.io/"):
                continue
            fields = []
            for j in range(ln):
                fa = p + 24 * j
                name, tag = name_at(u64(fa))
                fields.append((name, tag, desc(u64(fa + 8))))
            sname = tname(t).split(".")[-1]
        except (ValueError, IndexError, UnicodeDecodeError):
            continue
        if any('protobuf:"' in f[1] for f in fields):
            out.setdefault((pkg, sname.lower()), fields)
    return out


def go_field_info(fields):
    """tag number -> (json name, omitempty, inline, pointer, go type)"""
    info = {}
    for _name, tag, typ in fields:
        pm = re.search(r'protobuf:"[a-z0-9]+,(\d+),', tag)
        if not pm:
            continue
        jm = re.search(r'json:"([^"]*)"', tag)
        parts = (jm.group(1) if jm else "").split(",")
        info[int(pm.group(1))] = {
            "json": parts[0],
            "omitempty": "omitempty" in parts[1:],
            "inline": "inline" in parts[1:],
            "pointer": typ.startswith("ptr:"),
            "type": typ,
            "pname": "".join(re.findall(r'protobuf:"[^"]*name=(\w+)', tag)[:1]),
        }
    return info


# --------------------------------------------------------------------------------------
# k8s-openapi: per type, JSON key by letters-only spelling, and required fields.
# --------------------------------------------------------------------------------------
def letters(s):
    return re.sub(r"[^a-z0-9]", "", s.lower())


def openapi_types(root):
    types = {}
    for d, _, files in os.walk(root):
        for f in files:
            if not f.endswith(".rs") or f == "mod.rs":
                continue
            src = open(os.path.join(d, f)).read()
            sm = re.search(r"pub struct (\w+) \{(.*?)\n\}", src, re.S)
            if not sm:
                continue
            keys = {}
            for m in re.finditer(r'"([^"]+)" => Field::Key_(\w+)', src):
                keys[letters(m.group(1))] = m.group(1)
            required = set()
            for m in re.finditer(r"pub (?:r#)?(\w+): ([^\n]+),\n", sm.group(2)):
                if not m.group(2).startswith("Option<"):
                    required.add(letters(m.group(1)))
            rel = os.path.relpath(d, root).replace(os.sep, ".")
            types[(rel, letters(sm.group(1)))] = (keys, required)
    return types


# --------------------------------------------------------------------------------------
# k8s-pb: messages, tags, prost types.
# --------------------------------------------------------------------------------------
def resolve(type_path, module):
    segs = [s for s in type_path.strip().rstrip(",").split("::") if s]
    cur = list(module)
    while segs and segs[0] == "super":
        cur.pop()
        segs.pop(0)
    if segs and segs[0] == "crate":
        cur = []
        segs.pop(0)
    return ".".join(cur + segs)


def strip_wrappers(t):
    t = t.replace(" ", "")
    for w in ["::core::option::Option<", "::prost::alloc::vec::Vec<", "::prost::alloc::boxed::Box<",
              "Option<", "Vec<", "Box<"]:
        while t.startswith(w) and t.endswith(">"):
            t = t[len(w):-1]
    return t


def prost_messages(root):
    messages, resources = {}, {}
    for d, _, files in os.walk(root):
        if "mod.rs" not in files:
            continue
        module = os.path.relpath(d, root).split(os.sep)
        if module == ["."]:
            continue
        src = open(os.path.join(d, "mod.rs")).read()
        for sm in re.finditer(r"\npub struct (\w+) \{(\}|\n.*?\n\})\n", src, re.S):
            name = ".".join(module + [sm.group(1)])
            fields = []
            body = sm.group(2)
            for fm in re.finditer(r"#\[prost\(([^\]]*)\)\]\s*pub (?:r#)?(\w+):", body, re.S):
                attr, rust_name = fm.group(1), fm.group(2)
                depth, j = 0, fm.end()
                while not (body[j] == "," and depth == 0):
                    depth += {"<": 1, ">": -1}.get(body[j], 0)
                    j += 1
                rust_type = re.sub(r"\s", "", body[fm.end():j])
                tag = int(re.search(r'tag = "(\d+)"', attr).group(1))
                f = {"tag": tag, "rust": rust_name, "repeated": False, "map": False}
                mm = re.match(r'(btree_map|hash_map) = "(\w+), (\w+)"', attr)
                if mm:
                    assert mm.group(2) == "string", (name, rust_name)
                    f["map"] = True
                    f["type"] = mm.group(3)
                    if f["type"] == "message":
                        t = rust_type.replace(" ", "").replace("\n", "")
                        f["message"] = resolve(t[t.index(",") + 1:t.rindex(">")].rstrip(","), module)
                else:
                    k = attr.split(",")[0].strip()
                    f["type"] = "bytes" if k.startswith("bytes") else k
                    f["repeated"] = "repeated" in attr
                    if k == "message":
                        f["message"] = resolve(strip_wrappers(rust_type), module)
                assert f["type"] in ("string", "bytes", "bool", "int32", "int64", "double", "message"), f
                fields.append(f)
            messages[name] = fields
        for rm in re.finditer(r'impl crate::Resource for (\w+) \{\s*const API_VERSION: &\'static str = "([^"]*)";'
                              r'.*?const KIND: &\'static str = "([^"]*)";', src, re.S):
            resources[f"{rm.group(2)}/{rm.group(3)}"] = ".".join(module + [rm.group(1)])
    return messages, resources


def go_package(module):
    """prost module path -> Go import path"""
    if module[0] == "api":
        return "k8s.io/api/" + "/".join(module[1:])
    if module[0] == "apimachinery":
        return "k8s.io/apimachinery/" + "/".join(module[1:])
    if module[0] == "apiextensions_apiserver":
        return "k8s.io/apiextensions-apiserver/" + "/".join(module[1:])
    if module[0] == "kube_aggregator":
        return "k8s.io/kube-aggregator/" + "/".join(module[1:])
    return "k8s.io/" + "/".join(module)


# API group of each Go package (the proto package does not spell it).
GROUPS = {
    "core": "", "apiserverinternal": "internal.apiserver.k8s.io", "apps": "apps",
    "autoscaling": "autoscaling", "batch": "batch", "extensions": "extensions", "policy": "policy",
    "flowcontrol": "flowcontrol.apiserver.k8s.io", "rbac": "rbac.authorization.k8s.io",
    "imagepolicy": "imagepolicy.k8s.io", "admission": "admission.k8s.io",
    "apiextensions": "apiextensions.k8s.io", "apiregistration": "apiregistration.k8s.io",
    "metrics": "metrics.k8s.io", "custom_metrics": "custom.metrics.k8s.io",
    "external_metrics": "external.metrics.k8s.io", "meta": "meta.k8s.io",
    "testapigroup": "testapigroup.apimachinery.k8s.io",
}


def api_group(module):
    if module[:2] == ["apimachinery", "pkg"] and module[2:4] != ["apis", "meta"] and module[2:4] != ["apis", "testapigroup"]:
        return None
    g = module[-2]
    return GROUPS.get(g, g + ".k8s.io")


def camel(rust_name):
    parts = rust_name.split("_")
    return parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--k8s-pb", required=True)
    ap.add_argument("--k8s-openapi", required=True)
    ap.add_argument("--kubectl", action="append", default=[])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                 "..", "src", "protobuf", "schema.json"))
    a = ap.parse_args()

    messages, resources = prost_messages(a.k8s_pb)
    gos = [go_structs(k) for k in a.kubectl]
    oa = openapi_types(a.k8s_openapi)
    global_names = {}
    for keys, _ in oa.values():
        for k, v in keys.items():
            global_names.setdefault(k, v)

    stats = {"go": 0, "openapi": 0, "guess": 0}
    guessed = []
    out_msgs, lists = {}, set()
    for name, fields in sorted(messages.items()):
        module, sname = name.split(".")[:-1], name.split(".")[-1]
        gokey = (go_package(module), sname.lower())
        goinfo = [go_field_info(g[gokey]) for g in gos if gokey in g]
        # The same struct in another version of the group (new in a later release than
        # the kubectl binaries): used field by field when the proto name agrees.
        sibling = [go_field_info(fs) for g in gos for (pkg, low), fs in sorted(g.items())
                   if low == gokey[1] and pkg != gokey[0] and pkg.rsplit("/", 1)[0] == gokey[0].rsplit("/", 1)[0]]
        oakey = (".".join(module), letters(sname))
        oainfo = oa.get(oakey) or next(
            (v for (mod, low), v in sorted(oa.items())
             if low == oakey[1] and mod.rsplit(".", 1)[0] == oakey[0].rsplit(".", 1)[0]), None)
        rows = []
        for f in fields:
            gi = next((g[f["tag"]] for g in goinfo if f["tag"] in g), None)
            if gi is None:
                gi = next((g[f["tag"]] for g in sibling
                           if f["tag"] in g and letters(g[f["tag"]]["pname"]) == letters(f["rust"])), None)
            flags = (REPEATED if f["repeated"] else 0) | (MAP if f["map"] else 0)
            if gi:
                stats["go"] += 1
                jname = gi["json"]
                flags |= (OMITEMPTY if gi["omitempty"] else 0) | (POINTER if gi["pointer"] else 0)
                if gi["inline"]:
                    flags |= INLINE
                # A Go slice (or map of slices) carried as a wrapper message: ExtraValue, Verbs.
                gt = gi["type"]
                if f["type"] == "message" and not f["repeated"] and (
                        gt.startswith("slice:") or gt.startswith("ptr:slice:") or (f["map"] and gt.startswith("map:slice:"))):
                    lists.add(f["message"])
            elif oainfo and letters(f["rust"]) in oainfo[0]:
                stats["openapi"] += 1
                jname = oainfo[0][letters(f["rust"])]
                required = letters(f["rust"]) in oainfo[1]
                flags |= 0 if required else OMITEMPTY
                if f["type"] in ("int32", "int64", "bool", "double"):
                    flags |= POINTER
            else:
                stats["guess"] += 1
                guessed.append(f"{name}.{f['rust']}")
                jname = global_names.get(letters(f["rust"]), camel(f["rust"].removeprefix("r#")))
                flags |= OMITEMPTY
                if f["type"] in ("int32", "int64", "bool", "double"):
                    flags |= POINTER
            row = [f["tag"], jname, f["type"], flags, f.get("message")]
            rows.append(row)
        out_msgs[name] = rows

    kinds = {}
    for name in sorted(out_msgs):
        module, sname = name.split(".")[:-1], name.split(".")[-1]
        group = api_group(module)
        if group is None:
            continue
        version = module[-1]
        gv = f"{group}/{version}" if group else version
        # prost renames acronyms (APIService -> ApiService), so kinds are matched without case.
        kinds.setdefault(f"{gv}/{sname}".lower(), name)
    for key, name in resources.items():
        kinds[key.lower()] = name
    doc = {"messages": out_msgs, "kinds": kinds, "lists": sorted(lists)}
    with open(a.out, "w") as fh:
        json.dump(doc, fh, separators=(",", ":"), sort_keys=True)
    print(f"{len(out_msgs)} messages, {len(kinds)} kinds, lists {sorted(lists)}; fields {stats}", file=sys.stderr)
    if guessed:
        print("guessed names: " + ", ".join(guessed), file=sys.stderr)


if __name__ == "__main__":
    main()
