# Build: docker build -t rpcpin .
# Run:   docker run --rm -p 135:135 -p 6001:6001 -p 6004:6004 \
#          -v "$PWD/config/exchange.toml:/etc/rpcpin/rpcpin.toml:ro" rpcpin

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so that a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends libcap2-bin \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --no-create-home --shell /usr/sbin/nologin rpcpin
COPY --from=build /src/target/release/rpcpin /usr/local/bin/rpcpin
# Port 135 is privileged: grant the binary CAP_NET_BIND_SERVICE alone instead of root.
RUN setcap cap_net_bind_service=+ep /usr/local/bin/rpcpin
COPY config/exchange.toml /etc/rpcpin/rpcpin.toml
USER rpcpin
EXPOSE 135 6001 6004
ENTRYPOINT ["/usr/local/bin/rpcpin"]
CMD ["run", "--config", "/etc/rpcpin/rpcpin.toml"]
