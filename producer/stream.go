package producer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
)

// StreamConfig describes the audit stream. The defaults are the safe ones
// for a source of truth: file storage, no age or size limit, every message
// of every subject kept, delete and purge denied.
type StreamConfig struct {
	Name          string        // default "AUDIT"
	SubjectPrefix string        // default events.DefaultSubjectPrefix ("audit.exec")
	Replicas      int           // default 1; use 3 on a cluster
	Duplicates    time.Duration // Nats-Msg-Id window, default 2m
	// MaxAge and MaxBytes bound the stream; 0 means unbounded (default).
	// Bounding an audit log loses history: set them only if an archive
	// (e.g. a mirror) keeps the rest.
	MaxAge   time.Duration
	MaxBytes int64
}

// Defaults for StreamConfig.
const (
	DefaultStreamName = "AUDIT"
	DefaultDuplicates = 2 * time.Minute
)

// Validate fills in defaults and checks values.
func (c *StreamConfig) Validate() error {
	if c.Name == "" {
		c.Name = DefaultStreamName
	}
	if c.SubjectPrefix == "" {
		c.SubjectPrefix = events.DefaultSubjectPrefix
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.Duplicates == 0 {
		c.Duplicates = DefaultDuplicates
	}
	switch {
	case strings.ContainsAny(c.Name, " .*>/\\\t\r\n"):
		return fmt.Errorf("%w: stream name %q may not contain white space, '.', '*', '>', '/' or '\\'", ErrInvalidConfig, c.Name)
	case c.SubjectPrefix == "" || strings.ContainsAny(c.SubjectPrefix, "*> \t\r\n") || strings.HasPrefix(c.SubjectPrefix, ".") || strings.HasSuffix(c.SubjectPrefix, ".") || strings.Contains(c.SubjectPrefix, ".."):
		return fmt.Errorf("%w: subject prefix %q is not a literal subject", ErrInvalidConfig, c.SubjectPrefix)
	case c.Replicas < 1 || c.Replicas > 5:
		return fmt.Errorf("%w: replicas %d is outside 1..5", ErrInvalidConfig, c.Replicas)
	case c.Duplicates < 0 || c.MaxAge < 0 || c.MaxBytes < 0:
		return fmt.Errorf("%w: durations and sizes may not be negative", ErrInvalidConfig)
	case c.MaxAge > 0 && c.Duplicates > c.MaxAge:
		return fmt.Errorf("%w: duplicate window %s exceeds max age %s", ErrInvalidConfig, c.Duplicates, c.MaxAge)
	}
	return nil
}

// JetStreamConfig is the JetStream configuration of the audit stream c
// describes, as EnsureStream creates it (auditflow init compares an
// existing stream with it). c's defaults are filled in.
func (c StreamConfig) JetStreamConfig() (jetstream.StreamConfig, error) {
	if err := c.Validate(); err != nil {
		return jetstream.StreamConfig{}, err
	}
	return c.jsConfig(), nil
}

// jsConfig is the JetStream configuration for c.
func (c StreamConfig) jsConfig() jetstream.StreamConfig {
	maxBytes := c.MaxBytes
	if maxBytes == 0 {
		maxBytes = -1
	}
	return jetstream.StreamConfig{
		Name:              c.Name,
		Description:       "auditflow execution events: the source of truth for audit stores",
		Subjects:          []string{c.SubjectPrefix + ".>"},
		Retention:         jetstream.LimitsPolicy,
		Storage:           jetstream.FileStorage,
		Replicas:          c.Replicas,
		MaxAge:            c.MaxAge,
		MaxBytes:          maxBytes,
		MaxMsgs:           -1,
		MaxMsgsPerSubject: -1,
		Discard:           jetstream.DiscardOld,
		Duplicates:        c.Duplicates,
		DenyDelete:        true,
		DenyPurge:         true,
		AllowDirect:       true, // runners read a change's last event with a direct get
	}
}

// EnsureStream creates the audit stream, or checks that an existing one
// has the configuration c asks for. Creating it is for `auditflow init`,
// the embedded mode and tests; runners and projectors use OpenStream (see
// Config.CreateStream). It never changes an existing stream:
// running it again with the same config is a no-op, and a stream that
// differs in anything that matters is reported as ErrStreamMismatch with
// every difference named, for an operator to resolve deliberately.
//
// It makes one attempt unless WithRetry says otherwise; New retries for
// Config.RetryFor, so that a process starting while a cluster elects a
// leader waits for the new leader instead of failing.
func EnsureStream(ctx context.Context, js jetstream.JetStream, c StreamConfig, opts ...StreamOpt) (jetstream.Stream, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	want := c.jsConfig()
	return retry(ctx, js, streamRetry(opts), "ensure stream "+c.Name, func(ctx context.Context) (jetstream.Stream, error) {
		return ensureStream(ctx, js, want)
	})
}

// openOrCreate returns the stream want names, creating it as want if
// missing; created says whether this call made it (else it is to be
// checked against want).
func openOrCreate(ctx context.Context, js jetstream.JetStream, want jetstream.StreamConfig) (s jetstream.Stream, created bool, err error) {
	s, err = js.Stream(ctx, want.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		s, err = js.CreateStream(ctx, want)
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			// Another process created it first, or an earlier attempt of
			// ours did and its answer was lost.
			s, err = js.Stream(ctx, want.Name)
		} else if err == nil {
			return s, true, nil
		}
	}
	if err != nil {
		return nil, false, fmt.Errorf("producer: stream %s: %w", want.Name, err)
	}
	return s, false, nil
}

func ensureStream(ctx context.Context, js jetstream.JetStream, want jetstream.StreamConfig) (jetstream.Stream, error) {
	s, created, err := openOrCreate(ctx, js, want)
	if err != nil || created {
		return s, err
	}
	if diffs := streamDiff(s.CachedInfo().Config, want); len(diffs) > 0 {
		return nil, fmt.Errorf("%w: stream %s exists with %s; change it by hand (nats stream edit) or point auditflow at another stream",
			ErrStreamMismatch, want.Name, strings.Join(diffs, ", "))
	}
	return s, nil
}

// OpenStream returns the existing audit stream after checking, as
// EnsureStream does, that its configuration is the one c asks for. It never
// creates the stream: a missing one is an error wrapping ErrNoStream (and
// jetstream.ErrStreamNotFound) that says how to create or restore it.
// Runners and projectors open the stream this way, so that a stream that
// was deleted is never silently replaced by an empty one — every runner
// would then apply every change again. Creating it is an explicit act:
// `auditflow init`, the embedded mode, or EnsureStream.
//
// Like EnsureStream, it makes one attempt unless WithRetry says otherwise.
func OpenStream(ctx context.Context, js jetstream.JetStream, c StreamConfig, opts ...StreamOpt) (jetstream.Stream, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	want := c.jsConfig()
	return retry(ctx, js, streamRetry(opts), "open stream "+c.Name, func(ctx context.Context) (jetstream.Stream, error) {
		s, err := js.Stream(ctx, want.Name)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return nil, &NoStreamError{Stream: want.Name, Err: err}
		}
		if err != nil {
			return nil, fmt.Errorf("producer: stream %s: %w", want.Name, err)
		}
		if diffs := streamDiff(s.CachedInfo().Config, want); len(diffs) > 0 {
			return nil, fmt.Errorf("%w: stream %s exists with %s; change it by hand (nats stream edit) or point auditflow at another stream",
				ErrStreamMismatch, want.Name, strings.Join(diffs, ", "))
		}
		return s, nil
	})
}

// NoStreamError is a stream that OpenStream found missing (ErrNoStream).
type NoStreamError struct {
	Stream string
	Err    error // the server's answer: jetstream.ErrStreamNotFound
}

func (e *NoStreamError) Error() string {
	return fmt.Sprintf("producer: the audit stream %s does not exist. auditflow never creates it implicitly: if it was deleted, "+
		"an empty one would make every runner apply every change again. A new deployment: create it once with `auditflow init` "+
		"(as the admin user). A deleted stream: restore it from its backup or mirror first (auditflow restore --from AUDIT_MIRROR, or nats stream restore), "+
		"then start runners and projectors again",
		e.Stream)
}

// Unwrap returns ErrNoStream and the server's answer.
func (e *NoStreamError) Unwrap() []error { return []error{ErrNoStream, e.Err} }

// CheckStream compares an existing stream with c without changing or
// creating anything: it returns the differences (none: as configured), or
// an error wrapping jetstream.ErrStreamNotFound if there is no stream.
// Like EnsureStream, it makes one attempt unless WithRetry says otherwise.
func CheckStream(ctx context.Context, js jetstream.JetStream, c StreamConfig, opts ...StreamOpt) ([]string, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	want := c.jsConfig()
	return retry(ctx, js, streamRetry(opts), "check stream "+c.Name, func(ctx context.Context) ([]string, error) {
		s, err := js.Stream(ctx, c.Name)
		if err != nil {
			return nil, fmt.Errorf("producer: stream %s: %w", c.Name, err)
		}
		return streamDiff(s.CachedInfo().Config, want), nil
	})
}

func streamRetry(opts []StreamOpt) Retry {
	var r Retry
	for _, opt := range opts {
		opt(&r)
	}
	return r
}

func streamDiff(have, want jetstream.StreamConfig) []string {
	var d []string
	add := func(field string, h, w any) { d = append(d, fmt.Sprintf("%s %v (want %v)", field, h, w)) }
	if !slices.Contains(have.Subjects, want.Subjects[0]) {
		add("subjects", have.Subjects, want.Subjects)
	}
	if have.Storage != want.Storage {
		add("storage", have.Storage, want.Storage)
	}
	if have.Retention != want.Retention {
		add("retention", have.Retention, want.Retention)
	}
	if have.Replicas != want.Replicas {
		add("replicas", have.Replicas, want.Replicas)
	}
	if have.MaxAge != want.MaxAge {
		add("max age", have.MaxAge, want.MaxAge)
	}
	if have.MaxBytes != want.MaxBytes {
		add("max bytes", have.MaxBytes, want.MaxBytes)
	}
	if have.MaxMsgs != -1 || have.MaxMsgsPerSubject != -1 {
		add("max msgs (total, per subject)", [2]int64{have.MaxMsgs, have.MaxMsgsPerSubject}, [2]int64{-1, -1})
	}
	if have.Duplicates != want.Duplicates {
		add("duplicate window", have.Duplicates, want.Duplicates)
	}
	if !have.DenyDelete || !have.DenyPurge {
		add("deny delete/purge", [2]bool{have.DenyDelete, have.DenyPurge}, [2]bool{true, true})
	}
	if len(have.Sources) > 0 || have.Mirror != nil {
		d = append(d, "sources or a mirror (a restore is filling it: wait for auditflow restore to finish)")
	}
	if !have.AllowDirect {
		add("allow direct", have.AllowDirect, true)
	}
	return d
}
