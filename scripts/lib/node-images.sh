# Container images of the test node, built from local files (sourced by scripts/node).
#
# There is no Docker engine and no registry here, so every image is a root
# filesystem assembled in a directory and packed into an OCI archive by
# images/oci-archive.py, then loaded with `ctr -n k8s.io images import`.

PAUSE_IMAGE=fanout.local/pause:1

# build_pause_image WORK_DIR OUTPUT_TAR: the pod sandbox image (images/pause).
build_pause_image() {
  local work=$1 output=$2
  rm -rf "${work}/pause-rootfs"
  mkdir -p "${work}/pause-rootfs"
  (cd "${REPO_ROOT}/images/pause" &&
    GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod nice -n 10 \
      go build -trimpath -ldflags '-s -w' -o "${work}/pause-rootfs/pause" .)
  # 65535: the user Kubernetes' own pause image runs as.
  python3 "${REPO_ROOT}/images/oci-archive.py" --rootfs "${work}/pause-rootfs" --name "$PAUSE_IMAGE" \
    --entrypoint /pause --user 65535:65535 --output "$output" >/dev/null
}

# build_fanout_image BINARY IMAGE WORK_DIR OUTPUT_TAR
#
# The same layout as the Dockerfile's runtime stage (distroless/cc-debian12:nonroot):
# /fanout, the glibc and libgcc_s it links (found with ldd, copied from this
# Debian 12 host, the release the Dockerfile builds on), passwd/group entries
# for root, nobody and nonroot (65532), /home/nonroot, a sticky /tmp, no shell,
# and USER 65532:65532, ENTRYPOINT ["/fanout"].
build_fanout_image() {
  local binary=$1 image=$2 work=$3 output=$4 rootfs="${3}/fanout-rootfs" lib
  [[ -x "$binary" ]] || die "no Fanout binary at ${binary} (cargo build --release --bin fanout)"
  rm -rf "$rootfs"
  mkdir -p "${rootfs}/etc" "${rootfs}/tmp" "${rootfs}/home/nonroot"
  cp "$binary" "${rootfs}/fanout"
  # Every shared object the binary loads, including the dynamic loader, at the
  # path ldd reports (the loader's path is baked into the binary).
  while read -r lib; do
    mkdir -p "${rootfs}$(dirname "$lib")"
    cp -L "$lib" "${rootfs}${lib}"
  done < <(ldd "$binary" | grep -oE '/[^ ]+' | sort -u)
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
    'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"${rootfs}/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'nonroot:x:65532:' >"${rootfs}/etc/group"
  cp /etc/os-release "${rootfs}/etc/os-release"
  chmod 1777 "${rootfs}/tmp"
  chown 65532:65532 "${rootfs}/home/nonroot"
  chmod 700 "${rootfs}/home/nonroot"
  python3 "${REPO_ROOT}/images/oci-archive.py" --rootfs "$rootfs" --name "$image" \
    --entrypoint /fanout --user 65532:65532 --env PATH=/usr/local/bin:/usr/bin:/bin \
    --output "$output" >/dev/null
}
