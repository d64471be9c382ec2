# syntax=docker/dockerfile:1
# Build stage: the official Rust image; dependencies are cached in their own layer, so a source
# change recompiles only this crate.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Every workspace member's manifest must be here before the first build: `verifier/` is a
# member and a path dependency (tests/it/deploy_files.rs replays these steps); `vendor/` holds a
# patched dependency (vendor/README.md).
COPY Cargo.toml Cargo.lock build.rs ./
COPY verifier/Cargo.toml verifier/Cargo.toml
COPY vendor vendor
RUN mkdir -p src verifier/src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs verifier/src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src verifier/src \
    && mkdir /data
COPY migrations migrations
COPY templates templates
COPY verifier verifier
COPY src src
RUN touch src/main.rs src/lib.rs verifier/src/lib.rs && cargo build --release --locked

# Runtime stage: distroless (glibc, no shell, no package manager), as the non-root user 65532.
# TLS to PostgreSQL uses rustls with bundled roots, so no CA package is needed.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/auth-service /usr/local/bin/auth-service
COPY --from=build --chown=65532:65532 /data /data
USER 65532:65532
WORKDIR /data
VOLUME ["/data"]
ENV DATABASE_URL=sqlite:////data/auth_service.db \
    HOST=0.0.0.0 \
    PORT=8001
EXPOSE 8001
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/auth-service", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/auth-service"]
CMD ["serve"]
