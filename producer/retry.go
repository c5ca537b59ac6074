package producer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/internal/natsperm"
)

// Retry says how EnsureStream and CheckStream ride out a cluster that is
// briefly unable to answer: killing a stream's leader leaves it without
// one for the raft election timeout (seconds), and a client may be
// reconnecting to another node meanwhile.
type Retry struct {
	// For bounds how long transient failures are retried; 0 makes one
	// attempt.
	For time.Duration
	// AttemptTimeout bounds one attempt. Default 5s.
	AttemptTimeout time.Duration
	// Logger receives a warning per retry; nil discards.
	Logger *slog.Logger
}

// StreamOpt modifies EnsureStream and CheckStream.
type StreamOpt func(*Retry)

// WithRetry retries transient failures (no responders or no answer while
// a leader is elected, a reconnecting client, JetStream temporarily
// unavailable) with exponential back-off as r says. A configuration
// mismatch, an invalid config, a permission violation or the caller's
// cancelled context end the retries at once.
func WithRetry(r Retry) StreamOpt {
	return func(o *Retry) { *o = r }
}

// retry runs op until it succeeds, fails permanently or r's budget is
// spent. op gets a context bounded by the attempt timeout.
func retry[T any](ctx context.Context, js jetstream.JetStream, r Retry, what string, op func(context.Context) (T, error)) (T, error) {
	if r.AttemptTimeout <= 0 {
		r.AttemptTimeout = 5 * time.Second
	}
	log := r.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	attempt := 0
	b := backoff.WithContext(backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(100*time.Millisecond), backoff.WithMaxInterval(2*time.Second),
		backoff.WithMaxElapsedTime(r.For)), ctx)
	v, err := backoff.RetryNotifyWithData(func() (T, error) {
		attempt++
		actx, cancel := context.WithTimeout(ctx, r.AttemptTimeout)
		defer cancel()
		// A missing right ends the attempt at once, as a *natsperm.Error
		// naming the subject, instead of after AttemptTimeout.
		v, err := natsperm.Do(actx, js.Conn(), natsperm.JetStream, op)
		if err == nil {
			return v, nil
		}
		if ctx.Err() != nil || r.For <= 0 || !retryable(err) {
			return v, backoff.Permanent(err)
		}
		return v, err
	}, b, func(err error, wait time.Duration) {
		log.Warn(what+" failed, retrying", "attempt", attempt, "wait", wait.Round(time.Millisecond), "err", err)
	})
	if err != nil && ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
		err = fmt.Errorf("%w (last error: %w)", ctx.Err(), err)
	}
	return v, err
}

// retryable reports whether a failed JetStream request may succeed if
// made again: it went unanswered (a timeout of the request's own, no
// responders while a leader is elected), the client is between servers,
// or JetStream said it is temporarily unavailable. The caller checks its
// own context first: its expiry is not a reason to go on.
func retryable(err error) bool { return errors.Is(err, errNotApplied) || Transient(err) }

// Transient reports whether a failed JetStream request may succeed if made
// again: no answer or no responders (a leader election, a reconnecting
// client) or a server answer that says "not now". A decision (a
// configuration mismatch, a permission violation) or a cancelled context
// is not.
func Transient(err error) bool {
	switch {
	case errors.Is(err, ErrInvalidConfig), errors.Is(err, ErrStreamMismatch),
		errors.Is(err, nats.ErrPermissionViolation), errors.Is(err, nats.ErrAuthorization),
		errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, context.Canceled):
		return false
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout),
		errors.Is(err, nats.ErrNoResponders), errors.Is(err, jetstream.ErrNoStreamResponse),
		errors.Is(err, nats.ErrConnectionReconnecting), errors.Is(err, nats.ErrDisconnected):
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && temporary(apiErr)
}

// JetStream error codes that mean "not now" rather than "no".
const (
	errCodeClusterNotAvailable     jetstream.ErrorCode = 10008 // JetStream system temporarily unavailable (503)
	errCodeClusterNotLeader        jetstream.ErrorCode = 10009 // JetStream cluster can not handle request (500), during elections
	errCodeExpectedLastSeqNotReady jetstream.ErrorCode = 10163 // expected last sequence per subject temporarily unavailable (503)
	// A publish whose message id is still being proposed (409): an earlier
	// attempt of ours, in flight when its answer timed out. Once it is
	// stored, a retry is deduplicated (or, when sequence-guarded, refused
	// and recognised as ours).
	errCodeDuplicateInProcess jetstream.ErrorCode = 10158
)

// temporary reports whether the server's answer says to try again later.
// 503 alone is not enough: "JetStream not enabled (for account)" is a 503
// too, and permanent.
func temporary(e *jetstream.APIError) bool {
	switch e.ErrorCode {
	case errCodeClusterNotAvailable, errCodeClusterNotLeader, errCodeExpectedLastSeqNotReady, errCodeDuplicateInProcess:
		return true
	}
	return false
}

// ReadStream reads any named stream's info as js.Stream does (no check of
// its configuration, unlike OpenStream), riding out
// a cluster that is briefly unable to answer (a node just restarted, an
// election) as r says. A missing stream is jetstream.ErrStreamNotFound at
// once.
func ReadStream(ctx context.Context, js jetstream.JetStream, name string, r Retry) (jetstream.Stream, error) {
	return retry(ctx, js, r, "read stream "+name, func(ctx context.Context) (jetstream.Stream, error) {
		return js.Stream(ctx, name)
	})
}
