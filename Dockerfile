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

# Dependencies first, in their own layer: it is rebuilt only when Cargo.toml
# or Cargo.lock change, not on every source edit. Empty targets stand in for
# the crate's own code, and for the benchmark that Cargo.toml declares (the
# benches are not in the build context, but the manifest must parse).
COPY Cargo.toml Cargo.lock ./
RUN mkdir src benches && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > benches/fanout.rs \
    && cargo build --release --locked --bin fanout \
    && rm -rf src

# The crate itself. touch: the stand-ins above may be newer than the
# checkout's files, and cargo compares modification times.
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin fanout

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /src/target/release/fanout /fanout
# distroless's "nonroot" user, by number so that Kubernetes' runAsNonRoot
# can verify it without reading /etc/passwd.
USER 65532:65532
# The admin server: /livez, /readyz, /metrics.
EXPOSE 8080
ENTRYPOINT ["/fanout"]
