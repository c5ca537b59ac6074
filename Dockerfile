# Builds the runner, projector and operator CLI into one small image. Pure Go (the SQLite
# driver needs no cgo), so the binaries are static. The final image keeps a
# shell because change files run their commands with sh -c.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags=-s -o /out/runner ./cmd/runner && \
    CGO_ENABLED=0 go build -trimpath -ldflags=-s -o /out/projector ./cmd/projector && \
    CGO_ENABLED=0 go build -trimpath -ldflags=-s -o /out/auditflow ./cmd/auditflow

FROM alpine:3.22
RUN adduser -D -H -u 10001 auditflow && mkdir -p /var/lib/auditflow && chown auditflow /var/lib/auditflow
COPY --from=build /out/runner /out/projector /out/auditflow /usr/local/bin/
COPY examples /examples
USER auditflow
# In a container the projector's probes and metrics must be reachable from
# outside it; the binary's own default is 127.0.0.1:9464.
ENV AUDITFLOW_METRICS_ADDR=":9464"
WORKDIR /var/lib/auditflow
ENTRYPOINT []
