# Build: the toolchain image; run: a slim Debian with CA certificates (TLS).
FROM rust:1.95-slim-bookworm AS build
# The worker's allocator, jemalloc (tikv-jemallocator), is built from C
# source by its build script: the slim image has gcc and libc6-dev, not make.
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY protocol ./protocol
COPY amqp ./amqp
COPY clients ./clients
# A workspace member: cargo reads its manifest even when building only the worker.
COPY bench ./bench
COPY config ./config
COPY migrations ./migrations
RUN cargo build --release --locked --bin session-guard

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 session-guard
COPY --from=build /src/target/release/session-guard /usr/local/bin/session-guard
USER session-guard
ENTRYPOINT ["session-guard"]
CMD ["run"]
