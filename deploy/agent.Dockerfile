# syntax=docker/dockerfile:1
# kopilot-agent. Build from the repository root, for both architectures:
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     -f deploy/agent.Dockerfile -t ghcr.io/kopilot/kopilot-agent:TAG --push .
# See deploy/README.md.

# Build stage: Debian 12 (bookworm), the same release as the runtime stage
# below, so the binary links against the libuv and OpenSSL it will find there.
FROM swift:6.3-bookworm AS build
# Debian's package versions are not pinned (DL3008): bookworm's security
# updates replace them, and a pinned version would stop resolving.
# hadolint ignore=DL3008
RUN export DEBIAN_FRONTEND=noninteractive \
 && apt-get update -q \
 && apt-get install -y -q --no-install-recommends libuv1-dev libssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The Swift standard library and Foundation are linked statically, so the
# runtime stage needs no Swift toolchain. The build folder is a cache mount
# per architecture: rebuilds reuse the resolved packages and objects.
ARG TARGETARCH
RUN --mount=type=cache,id=kopilot-build-${TARGETARCH},target=/src/.build \
    swift build -c release --static-swift-stdlib --product kopilot-agent \
 && install -D -m 0755 "$(swift build -c release --show-bin-path)/kopilot-agent" /out/kopilot-agent

# Runtime stage: only the shared libraries the binary needs.
FROM debian:bookworm-slim
# hadolint ignore=DL3008
RUN export DEBIAN_FRONTEND=noninteractive \
 && apt-get update -q \
 && apt-get install -y -q --no-install-recommends libuv1 libssl3 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/kopilot-agent /usr/local/bin/kopilot-agent
# A numeric non-root user (the one distroless calls nonroot), so that
# Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
USER 65532:65532
# The agent only dials out: no port to expose.
ENTRYPOINT ["/usr/local/bin/kopilot-agent"]
