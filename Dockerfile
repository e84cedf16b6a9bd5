# The operator's image: a release build of `perennial` on a distroless base that runs as the
# nonroot user (65532), as the Helm chart's restricted securityContext expects.
#   docker build -t ghcr.io/perennial/perennial:0.1.0 .

FROM rust:1.89-bookworm AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin perennial

# glibc and libgcc from Debian 12, which the builder above links against; no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /src/target/release/perennial /usr/local/bin/perennial
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/perennial"]
CMD ["run", "--metrics-addr", "0.0.0.0:8080", "--log-format", "json"]
