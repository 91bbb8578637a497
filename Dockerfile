# syntax=docker/dockerfile:1
#
# The Fanout controller image: a locked release build on Debian 12, run on
# distroless/cc-debian12 (glibc and libgcc_s, no shell, no package manager)
# as a non-root user.
#
#   docker build -t fanout:0.1.0 .
#
# The builder and the runtime are the same Debian release (bookworm = 12), so
# the binary never needs a newer glibc than the runtime has. The binary needs
# no OpenSSL (TLS is rustls), no CA bundle (it talks only to the API server,
# whose CA comes with the ServiceAccount token) and no writable filesystem.
# tests/chart.rs checks the binary's linkage against this runtime, and runs
# the builder's steps (as `cargo check`) on exactly what .dockerignore admits.

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS builder
WORKDIR /src

# Dependencies first, in their own layer: it is rebuilt only when a manifest
# or Cargo.lock changes, not on every source edit. Cargo loads the whole
# workspace, so every member's manifest comes in, each with empty targets
# standing in for its code; only the fanout binary is built.
COPY Cargo.toml Cargo.lock ./
COPY crates/kube-lifecycle/Cargo.toml crates/kube-lifecycle/
COPY crates/fanout/Cargo.toml crates/fanout/
COPY crates/testkit/Cargo.toml crates/testkit/
COPY crates/fanout-bench/Cargo.toml crates/fanout-bench/
COPY examples/Cargo.toml examples/
RUN for member in crates/kube-lifecycle crates/fanout crates/testkit crates/fanout-bench examples; do \
        mkdir -p "$member/src" && echo 'fn main() {}' > "$member/src/main.rs" && touch "$member/src/lib.rs"; \
    done \
    && cargo build --release --locked -p fanout --bin fanout \
    && rm -rf crates/kube-lifecycle/src crates/fanout/src

# The two crates the binary is made of. touch: the stand-ins above may be
# newer than the checkout's files, and cargo compares modification times.
COPY crates/kube-lifecycle/src crates/kube-lifecycle/src/
COPY crates/fanout/src crates/fanout/src/
RUN touch crates/kube-lifecycle/src/lib.rs crates/fanout/src/lib.rs crates/fanout/src/main.rs \
    && cargo build --release --locked -p fanout --bin fanout

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /src/target/release/fanout /fanout
# distroless's "nonroot" user, by number so that Kubernetes' runAsNonRoot
# can verify it without reading /etc/passwd.
USER 65532:65532
# The admin server: /livez, /readyz, /metrics.
EXPOSE 8080
ENTRYPOINT ["/fanout"]
