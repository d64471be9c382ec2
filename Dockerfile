# syntax=docker/dockerfile:1
# Build stage: the official Rust image; dependencies are cached in their own layer.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY migrations migrations
COPY src src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

# Runtime stage: a small Debian with only CA certificates; runs as a non-root user.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data auth \
    && mkdir -p /data && chown auth /data
COPY --from=build /src/target/release/auth-service /usr/local/bin/auth-service
USER 10001
WORKDIR /data
VOLUME ["/data"]
ENV DATABASE_URL=sqlite:////data/auth_service.db \
    HOST=0.0.0.0 \
    PORT=8001
EXPOSE 8001
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["auth-service", "healthcheck"]
ENTRYPOINT ["auth-service"]
CMD ["serve"]
