# Multi-stage build of warren's binaries; the runtime image holds only them.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin warren-dispatcher --bin warren-worker

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 warren
COPY --from=build /src/target/release/warren-dispatcher /src/target/release/warren-worker /usr/local/bin/
USER warren
# Run as `warren-dispatcher` or `warren-worker`; configure with WARREN__* variables.
CMD ["warren-worker"]
