# syntax=docker/dockerfile:1
#
# regcache's container image, for those who build with a daemon and the
# internet:
#
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     --build-arg VERSION=$(git describe --tags --always --dirty) \
#     --build-arg REVISION=$(git rev-parse HEAD) -t regcache .
#
# `make image` builds the same image offline and without a daemon
# (tools/mkimage); internal/imagebuild's tests keep the two in step: FROM
# scratch, the CA bundle, user 65532, the store volume, port 5000,
# entrypoint regcache serve, config from REGCACHE_CONFIG.

ARG GO_VERSION=1.26.8

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-bookworm AS build
ARG TARGETOS
ARG TARGETARCH
ARG VERSION=(devel)
ARG REVISION=
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath -buildvcs=false \
      -ldflags "-s -w -X github.com/regcache/regcache/internal/buildinfo.version=${VERSION} -X github.com/regcache/regcache/internal/buildinfo.commit=${REVISION}" \
      -o /out/usr/bin/regcache ./cmd/regcache
RUN mkdir -p /out/var/lib/regcache /out/tmp && chmod 1777 /out/tmp

FROM scratch
ARG VERSION=(devel)
ARG REVISION=
ARG CREATED=
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY deploy/image/rootfs/ /
COPY --from=build /out/tmp /tmp
COPY --from=build --chown=65532:65532 /out/var/lib/regcache /var/lib/regcache
COPY --from=build /out/usr/bin/regcache /usr/bin/regcache
LABEL org.opencontainers.image.title="regcache" \
      org.opencontainers.image.description="A pull-through caching container registry that keeps CI pulls working under Docker Hub rate limits" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/regcache/regcache" \
      org.opencontainers.image.url="https://github.com/regcache/regcache" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="scratch"
ENV PATH=/usr/bin REGCACHE_CONFIG=/etc/regcache/regcache.yaml
USER 65532:65532
WORKDIR /var/lib/regcache
VOLUME /var/lib/regcache
EXPOSE 5000/tcp
ENTRYPOINT ["/usr/bin/regcache"]
CMD ["serve"]
