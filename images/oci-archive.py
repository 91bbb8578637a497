#!/usr/bin/env python3
"""Packs a root filesystem directory into a single-layer OCI image archive.

There is no Docker engine and no registry on the machines this project is
tested on, so images for the test node are built from local files and loaded
with `ctr -n k8s.io images import`. This writes the OCI image layout
(oci-layout, index.json, blobs/sha256/...) as one tar, which is exactly what
`ctr images import` and `skopeo copy oci-archive:` read. Only the standard
library is used, and the output is byte-for-byte reproducible: file times,
owners and order are fixed, so the same rootfs always gives the same digest.

    oci-archive.py --rootfs DIR --name fanout.local/pause:1 \
        --entrypoint /pause [--cmd ARG ...] [--user 65532:65532] \
        [--env K=V ...] [--workdir /] --output pause.tar
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile

EPOCH = 0  # mtime for every file and for the gzip header: reproducible digests


def layer_tar(rootfs):
    """A tar of rootfs with sorted entries, root-owned unless the file says otherwise."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(rootfs):
            dirnames.sort()
            for name in sorted(dirnames) + sorted(filenames):
                path = os.path.join(dirpath, name)
                arcname = os.path.relpath(path, rootfs)
                info = tar.gettarinfo(path, arcname)
                info.mtime = EPOCH
                info.uname = info.gname = ""
                if info.isreg():
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
    return buf.getvalue()


def gzip_bytes(data):
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=EPOCH) as gz:
        gz.write(data)
    return out.getvalue()


def blob(blobs, data, media_type):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rootfs", required=True)
    p.add_argument("--name", required=True, help="image reference, e.g. fanout.local/pause:1")
    p.add_argument("--entrypoint", action="append", default=[])
    p.add_argument("--cmd", action="append", default=[])
    p.add_argument("--user", default="")
    p.add_argument("--env", action="append", default=["PATH=/usr/local/bin:/usr/bin:/bin"])
    p.add_argument("--workdir", default="/")
    p.add_argument("--output", required=True)
    args = p.parse_args()

    raw = layer_tar(args.rootfs)
    blobs = {}
    layer = blob(blobs, gzip_bytes(raw), "application/vnd.oci.image.layer.v1.tar+gzip")
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": args.entrypoint or None,
            "Cmd": args.cmd or None,
            "User": args.user,
            "Env": args.env,
            "WorkingDir": args.workdir,
        },
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
        "history": [{"created_by": "images/oci-archive.py"}],
    }
    config_desc = blob(blobs, json.dumps(config, sort_keys=True).encode(),
                       "application/vnd.oci.image.config.v1+json")
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config_desc, "layers": [layer]}
    manifest_desc = blob(blobs, json.dumps(manifest, sort_keys=True).encode(),
                         "application/vnd.oci.image.manifest.v1+json")
    manifest_desc["annotations"] = {
        # containerd names the imported image from this annotation...
        "io.containerd.image.name": args.name,
        # ...and other OCI tools from this one (the tag part only).
        "org.opencontainers.image.ref.name": args.name.rsplit(":", 1)[-1],
    }
    manifest_desc["platform"] = {"architecture": "amd64", "os": "linux"}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [manifest_desc]}

    with tarfile.open(args.output, "w") as out:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), EPOCH, 0o644
            out.addfile(info, io.BytesIO(data))
        add("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        add("index.json", json.dumps(index, sort_keys=True).encode())
        for digest, data in sorted(blobs.items()):
            add("blobs/sha256/" + digest.split(":", 1)[1], data)
    print(manifest_desc["digest"])


if __name__ == "__main__":
    sys.exit(main())
