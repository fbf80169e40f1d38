# sxds: build with the Rust toolchain, run on a slim Debian as a non-root user.
#   docker build -t sxds .
#   docker run -p 8081:8081 -p 8082:8082 -v sxds-data:/var/lib/sxds sxds

FROM rust:1-bookworm AS build
WORKDIR /src
# etcd-client (the etcd store) compiles etcd's .proto files with protoc.
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler && rm -rf /var/lib/apt/lists/*
# build.rs runs `cargo metadata` to find the envoy-types descriptors and the
# cncf/xds protos of data-plane-api; the builder has registry access, so that
# just works here.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY src src
RUN cargo build --release --locked --features etcd \
 && install -m 0755 target/release/sxds /usr/local/bin/sxds

FROM debian:bookworm-slim
RUN useradd --system --user-group --uid 10001 --home-dir /var/lib/sxds --shell /usr/sbin/nologin sxds \
 && mkdir -p /var/lib/sxds \
 && chown sxds:sxds /var/lib/sxds
COPY --from=build /usr/local/bin/sxds /usr/local/bin/sxds
ENV SXDS_DATA_DIR=/var/lib/sxds \
    SXDS_PRODUCTION=true
# The bundle store (sxds.redb) lives here; keep it on a volume.
VOLUME /var/lib/sxds
WORKDIR /var/lib/sxds
USER sxds
# 8081: xDS gRPC (Envoy connects here). 8082: the REST API.
EXPOSE 8081 8082
ENTRYPOINT ["/usr/local/bin/sxds"]
