# taskhost's container image: the server, its page and dashboard built in, and the bundled
# tasks. Build with the commit it comes from (shown in taskhost_build_info):
#
#   docker build --build-arg TASKHOST_GIT_COMMIT=$(git rev-parse --short=12 HEAD) -t taskhost .
#   docker run -p 9501:9501 -e TASKHOST_TOKEN=$(openssl rand -hex 16) taskhost
#
# The server listens on 0.0.0.0:9501 inside the container, which needs a token
# (TASKHOST_TOKEN, or TASKHOST_TOKEN_FILE with a mounted secret) or TASKHOST_NO_TOKEN=true.

# --- build: the binary and the bundled tasks --------------------------------------------
FROM rust:1.95-slim-bookworm AS build
# make: the server's allocator (jemalloc) is built from source by its crate.
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add wasm32-wasip1 wasm32-wasip2 \
 && cargo install just --locked
WORKDIR /src
COPY . .
ARG TASKHOST_GIT_COMMIT=unknown
ENV TASKHOST_GIT_COMMIT=${TASKHOST_GIT_COMMIT} \
    CARGO_TARGET_DIR=/target
RUN just build-guests \
 && cargo build --release --locked -p taskhost \
 && install -D -m 0755 /target/release/taskhost /out/taskhost \
 && mkdir -p /out/tasks && cp tasks/* /out/tasks/

# --- runtime: a slim Debian, a user of its own, nothing else ----------------------------
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/taskhost --create-home taskhost \
 && install -d -o taskhost -g taskhost -m 0700 /var/cache/taskhost
COPY --from=build /out/taskhost /usr/local/bin/taskhost
COPY --from=build /out/tasks /usr/local/share/taskhost/tasks
ENV TASKHOST_LISTEN=0.0.0.0:9501 \
    TASKHOST_TASKS=/usr/local/share/taskhost/tasks \
    TASKHOST_CACHE_DIR=/var/cache/taskhost \
    TASKHOST_LOG_FORMAT=json
USER taskhost
WORKDIR /var/lib/taskhost
EXPOSE 9501
STOPSIGNAL SIGTERM
# /healthz with bash alone (the slim image has no curl): 200 while serving, 503 while
# draining at shutdown.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${TASKHOST_LISTEN##*:} && printf 'GET /healthz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/usr/local/bin/taskhost"]
