# Multi-stage build of warren's binaries; the runtime image holds only them.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin warren-dispatcher --bin warren-worker --bin warren

FROM debian:bookworm-slim
# CA roots for amqps:// URLs verified against public CAs.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 warren
COPY --from=build /src/target/release/warren-dispatcher /src/target/release/warren-worker \
    /src/target/release/warren /usr/local/bin/
USER warren
# Run as `warren-dispatcher` or `warren-worker` (or the `warren` CLI); configure with
# WARREN__* variables.
CMD ["warren-worker"]
