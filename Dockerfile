# The gateway's image, as the Kubernetes manifests (k8s/) run it:
#   docker build -t gateway:latest .
# The build context is the repository; .dockerignore keeps target/ (several
# GB after a test run) and .git out of it.
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
# The release profile keeps line tables for profiling on a dev machine; the
# image needs none of it: no debug info, symbols stripped (about 130 MB -> 20 MB).
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=symbols
RUN cargo build --release --locked -p gateway --bin gateway

FROM debian:bookworm-slim
# CA certificates: https JWKS, Consul and OTLP endpoints are verified against
# the system roots, and bookworm-slim ships none.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# Owned by the user it runs as, read-only to everyone: Linux honours the
# gateway's MADV_PAGEOUT on its own code (start-up code dropped from memory
# after each config load, docs/operations.md) only for a file the process
# owns; the root filesystem is read-only at run time (the Deployment), so
# owning the file does not let the process change it.
COPY --from=build --chown=65532:65532 --chmod=0555 /src/target/release/gateway /usr/local/bin/gateway
# Where the manifests mount routes.toml (a ConfigMap), the descriptors (a
# ConfigMap) and the TLS certificate (a Secret); the root filesystem is
# read-only at run time, so nothing else is written.
RUN mkdir -p /etc/gateway/config /etc/gateway/descriptors /etc/gateway/tls
# Not root, and numeric so that Kubernetes' runAsNonRoot can check it; the
# same user as the Deployment's runAsUser.
USER 65532:65532
EXPOSE 8080 9901
ENTRYPOINT ["/usr/local/bin/gateway"]
CMD ["serve", "--config", "/etc/gateway/config/routes.toml"]
