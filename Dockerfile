# syntax=docker/dockerfile:1
# Multi-stage build: a full Rust toolchain to build, a slim Debian to run.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p chunkvault \
 && strip target/release/chunkvault

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/chunkvault --create-home chunkvault
COPY --from=build /src/target/release/chunkvault /usr/local/bin/chunkvault
USER chunkvault
WORKDIR /var/lib/chunkvault
# MALLOC_ARENA_MAX=2: Rust allocations go to mimalloc, but SQLite's and other C libraries' go
# to glibc, which otherwise keeps an arena per thread.
ENV CHUNKVAULT_LISTEN=0.0.0.0:3000 \
    CHUNKVAULT_DATA_DIR=/var/lib/chunkvault/data \
    CHUNKVAULT_LOG_FORMAT=json \
    MALLOC_ARENA_MAX=2
VOLUME ["/var/lib/chunkvault/data"]
EXPOSE 3000
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS http://127.0.0.1:3000/healthz || exit 1
ENTRYPOINT ["chunkvault"]
CMD ["serve"]
