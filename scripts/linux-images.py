#!/usr/bin/env python3
"""Builds the Linux container images the containerd tests and benchmarks use, as OCI
archives (`ctr images import` / `ctr images push` take them), from Debian's
busybox-static: there is no external registry to pull `pause` or `busybox` from.

    scripts/linux-images.py OUTDIR

writes OUTDIR/pause.tar (`kelp.local/pause:3.10`, the sandbox image containerd's CRI
plugin is configured with) and OUTDIR/busybox.tar (`kelp.local/busybox:1.35`, a shell
and its applets, plus /www/index.html for `busybox httpd`). Output is reproducible
(fixed mtimes, sorted entries), so re-running yields the same digests.
"""
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

BUSYBOX = "/bin/busybox"
ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)


def layer(files):
    """A tar layer from [(path, kind, data_or_target, mode)]."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for path, kind, data, mode in sorted(files, key=lambda f: f[0]):
            info = tarfile.TarInfo(path)
            info.mtime = 0
            info.mode = mode
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                t.addfile(info)
            elif kind == "link":
                info.type = tarfile.SYMTYPE
                info.linkname = data
                t.addfile(info)
            else:
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def blob(blobs, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return digest


def image(name, files, config):
    blobs = {}
    tar = layer(files)
    diff_id = blob(blobs, tar)
    cfg = {
        "architecture": ARCH,
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "scripts/linux-images.py"}],
    }
    cfg_bytes = json.dumps(cfg, sort_keys=True).encode()
    cfg_digest = blob(blobs, cfg_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": cfg_digest,
            "size": len(cfg_bytes),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": diff_id,
                "size": len(tar),
            }
        ],
    }
    m_bytes = json.dumps(manifest, sort_keys=True).encode()
    m_digest = blob(blobs, m_bytes)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": m_digest,
                "size": len(m_bytes),
                "platform": {"architecture": ARCH, "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1],
                },
            }
        ],
    }
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as t:
        entries = [("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
                   ("index.json", json.dumps(index, sort_keys=True).encode())]
        entries += [("blobs/sha256/" + d.split(":")[1], b) for d, b in sorted(blobs.items())]
        for path, data in entries:
            info = tarfile.TarInfo(path)
            info.mtime = 0
            info.mode = 0o644
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return out.getvalue()


def base_files():
    bb = open(BUSYBOX, "rb").read()
    files = [
        ("bin", "dir", None, 0o755),
        ("bin/busybox", "file", bb, 0o755),
        ("etc", "dir", None, 0o755),
        ("etc/passwd", "file", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n", 0o644),
        ("etc/group", "file", b"root:x:0:\nnogroup:x:65534:\n", 0o644),
        ("tmp", "dir", None, 0o1777),
        ("root", "dir", None, 0o700),
    ]
    return files


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "target/linux-images"
    os.makedirs(out, exist_ok=True)
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()

    pause = base_files()
    with open(os.path.join(out, "pause.tar"), "wb") as f:
        # PID 1 of the sandbox: holds the namespaces; containerd's CRI plugin stops it
        # with SIGKILL, so it needs no signal handling.
        f.write(image("kelp.local/pause:3.10", pause,
                      {"Entrypoint": ["/bin/busybox", "sleep", "2147483647"]}))

    bb = base_files() + [("bin/" + a, "link", "busybox", 0o777) for a in applets if a != "busybox"]
    bb += [("www", "dir", None, 0o755),
           ("www/index.html", "file", b"hello from a Linux container\n", 0o644)]
    with open(os.path.join(out, "busybox.tar"), "wb") as f:
        f.write(image("kelp.local/busybox:1.35", bb, {
            "Cmd": ["sh"],
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        }))
    print(out)


if __name__ == "__main__":
    main()
