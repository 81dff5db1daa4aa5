# Build: docker build -t rpcpin .
# Run:   docker run --rm -p 135:135 -p 6001:6001 -p 6004:6004 -p 127.0.0.1:9135:9135 \
#          -v "$PWD/rpcpin.toml:/etc/rpcpin/rpcpin.toml:ro" rpcpin
# rpcpin.toml: a copy of config/docker.toml with backend.host (and epm.advertise behind
# Docker's NAT) set; its [admin] listener on port 9135 answers the HEALTHCHECK.

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so that a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

FROM debian:bookworm-slim
# libcap2-bin for setcap; unpinned, so that a rebuild takes bookworm's security updates.
# A fixed numeric uid/gid: USER below can then be numeric, which Kubernetes'
# runAsNonRoot needs to verify the user.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libcap2-bin \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10135 rpcpin \
    && useradd --system --uid 10135 --gid rpcpin --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin rpcpin
COPY --from=build /src/target/release/rpcpin /usr/local/bin/rpcpin
# Port 135 is privileged: grant the binary CAP_NET_BIND_SERVICE alone instead of root.
RUN setcap cap_net_bind_service=+ep /usr/local/bin/rpcpin
COPY config/docker.toml /etc/rpcpin/rpcpin.toml
COPY README.md packaging/copyright /usr/share/doc/rpcpin/
USER 10135:10135
# 135: endpoint mapper; 6001, 6004: the pins; 9135: admin (/healthz, /readyz, /metrics).
EXPOSE 135 6001 6004 9135
# GET /healthz on the admin listener with bash's /dev/tcp: no HTTP client in the image.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9135 && printf 'GET /healthz HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nConnection: close\\r\\n\\r\\n' >&3 && read -r -t 4 status <&3 && [[ $status == 'HTTP/1.'?' 200 '* ]]"]
ENTRYPOINT ["/usr/local/bin/rpcpin"]
CMD ["run", "--config", "/etc/rpcpin/rpcpin.toml"]
