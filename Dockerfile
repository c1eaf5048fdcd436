# Builds the sidewire binary (no protoc needed) into a small runtime image.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin sidewire

FROM debian:bookworm-slim
COPY --from=build /src/target/release/sidewire /usr/local/bin/sidewire
COPY configs/sidewire.yaml /etc/sidewire/sidewire.yaml
EXPOSE 8000 9100
USER 65534
ENTRYPOINT ["/usr/local/bin/sidewire"]
CMD ["--config", "/etc/sidewire/sidewire.yaml"]
