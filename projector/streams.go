package projector

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/producer"
)

// ErrNoStream: one of the projector's own streams (dead letters, writes)
// does not exist and Config.CreateStreams is not set. (A missing audit
// stream is producer.ErrNoStream.) It lives here rather than in errors.go
// only because it belongs to the stream setup in this file.
var ErrNoStream = errors.New("projector: stream does not exist")

// Streams returns the configurations of the projector's own streams, as
// EnsureStreams creates them: AUDIT_DEADLETTER (events a projector could
// not store, kept for good) and AUDIT_WRITES (AuditWrite telemetry, kept a
// week). Only cfg's Stream.Replicas, DeadLetterPrefix and WritesPrefix
// matter; zero values take their defaults.
func Streams(cfg Config) []jetstream.StreamConfig {
	replicas := cfg.Stream.Replicas
	if replicas == 0 {
		replicas = 1
	}
	setDefault(&cfg.DeadLetterPrefix, DefaultDeadLetterPrefix)
	setDefault(&cfg.WritesPrefix, DefaultWritesPrefix)
	setDefault(&cfg.HeldPrefix, DefaultHeldPrefix)
	return []jetstream.StreamConfig{
		{Name: DeadLetterStream, Subjects: []string{cfg.DeadLetterPrefix + ".>"}, Storage: jetstream.FileStorage,
			Replicas: replicas, Description: "auditflow events a projector could not store"},
		{Name: WritesStream, Subjects: []string{cfg.WritesPrefix + ".>"}, Storage: jetstream.FileStorage,
			Replicas: replicas, MaxAge: 7 * 24 * time.Hour, Description: "auditflow AuditWrite events (projector telemetry)"},
		// A work queue: a pointer is removed once a projector has stored
		// its event. Duplicates (a redelivered event parked again) are
		// dropped within the default two minutes.
		{Name: HeldStream, Subjects: []string{cfg.HeldPrefix + ".>"}, Storage: jetstream.FileStorage, Retention: jetstream.WorkQueuePolicy,
			Replicas: replicas, Description: "auditflow events of a newer schema version, parked for a newer projector (pointers)"},
	}
}

// EnsureStreams creates what a projector needs on the server and is
// missing: the audit stream (producer.EnsureStream, which also checks an
// existing one's configuration) and the projector's own streams (Streams).
// It is what `auditflow init` and the embedded mode do, and what New does
// with Config.CreateStreams.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, cfg Config) error {
	if _, err := producer.EnsureStream(ctx, js, cfg.Stream); err != nil {
		return err
	}
	for _, s := range Streams(cfg) {
		if _, err := openStream(ctx, js, s, true); err != nil {
			return err
		}
	}
	return nil
}

// openStream opens one of the projector's own streams, creating it if
// missing when create is set.
func openStream(ctx context.Context, js jetstream.JetStream, s jetstream.StreamConfig, create bool) (jetstream.Stream, error) {
	st, err := js.Stream(ctx, s.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) && !create {
		return nil, fmt.Errorf("%w: %s (%s) is missing: create the projector's streams with `auditflow init` (as the admin user): %w",
			ErrNoStream, s.Name, s.Description, err)
	}
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		st, err = js.CreateStream(ctx, s)
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			st, err = js.Stream(ctx, s.Name)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("projector: stream %s: %w", s.Name, err)
	}
	return st, nil
}
