# syntax=docker/dockerfile:1
# The image of the Helm chart (helm/referral-attribution): the three binaries
# (referral-ingest, referral-aggregator, referral-api) in /usr/local/bin, run as user 10001.
#
#   docker build -t ghcr.io/example/referral-attribution:0.1.0 .
#
# The tag should be the chart's appVersion (the workspace version in Cargo.toml).

FROM rust:1-bookworm AS builder
# rdkafka builds its bundled librdkafka from source (configure + make, a C/C++ toolchain;
# cmake only with rdkafka's cmake-build feature), links zlib, and finds it with pkg-config.
# rusqlite builds its bundled SQLite with the same C compiler. OpenSSL (Kafka TLS/SASL,
# ClickHouse https) is built from source too (openssl-src: perl and make) and linked
# statically, so the runtime image needs no libssl.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake perl pkg-config zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
      -p referral-ingest -p referral-aggregator -p referral-api \
 && mkdir -p /out/usr/local/bin \
 && cp target/release/referral-ingest target/release/referral-aggregator target/release/referral-api \
      /out/usr/local/bin/
# The binaries link libz dynamically (rdkafka's librdkafka): ship the builder's copy, at
# the path of this architecture, so the runtime never depends on the base image having it.
RUN multiarch="$(gcc -print-multiarch)" \
 && mkdir -p "/out/usr/lib/${multiarch}" \
 && cp -L "/usr/lib/${multiarch}/libz.so.1" "/out/usr/lib/${multiarch}/libz.so.1" \
 && mkdir -p /out/data \
 && for binary in /out/usr/local/bin/*; do ldd "${binary}"; done

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/usr/ /usr/
# The embedded mode's data directory (a plain `docker run`); the chart's production mode
# uses Kafka + ClickHouse and a read-only root filesystem.
COPY --from=builder --chown=10001:10001 /out/data /data
ENV REFERRAL_LISTEN=0.0.0.0:8080 \
    REFERRAL_DATA_DIR=/data
USER 10001:10001
EXPOSE 8080
# The chart sets the command of each component; alone, the image runs the whole service
# in one process (embedded log and store). On 0.0.0.0 it needs API tokens:
#   docker run -p 8080:8080 -e REFERRAL_API_TOKENS='sha256:<hex>=admin' IMAGE
# (or -e REFERRAL_ALLOW_ANONYMOUS=true for an open API on purpose).
CMD ["/usr/local/bin/referral-api"]
