# berth as a container image for an ECS daemon service: the static binary, a CA bundle
# (reqwest and the AWS SDK read the OS trust store; an empty root has none) and the default
# config, on an empty root. Build it with scripts/build-image, which stages the context
# (the binary of scripts/build-static: static glibc, the same the .deb and .rpm hold):
#
#   scripts/build-image berth:latest
#
# Dockerfile.multistage is the same image built from source inside Docker, where a Rust base
# image can be pulled.
FROM scratch
COPY berth /usr/bin/berth
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY berth.toml /etc/berth/berth.toml
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
EXPOSE 24224
# The image has no shell: berth asks its own admin endpoint.
HEALTHCHECK --interval=30s --timeout=5s --retries=3 CMD ["/usr/bin/berth", "health", "--config", "/etc/berth/berth.toml"]
ENTRYPOINT ["/usr/bin/berth"]
CMD ["run", "--config", "/etc/berth/berth.toml"]
