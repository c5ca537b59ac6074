package producer

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestRetryable(t *testing.T) {
	api := func(code int, errCode jetstream.ErrorCode) error {
		return fmt.Errorf("producer: stream AUDIT: %w", &jetstream.APIError{Code: code, ErrorCode: errCode})
	}
	for _, c := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("producer: stream AUDIT: %w", context.DeadlineExceeded), true}, // jetstream's own request timeout
		{nats.ErrTimeout, true},
		{nats.ErrNoResponders, true},
		{jetstream.ErrNoStreamResponse, true},
		{nats.ErrConnectionReconnecting, true},
		{nats.ErrDisconnected, true},
		{api(503, errCodeClusterNotAvailable), true},
		{api(503, errCodeExpectedLastSeqNotReady), true},
		{api(500, errCodeClusterNotLeader), true},
		{api(409, errCodeDuplicateInProcess), true},
		{context.Canceled, false},
		{nats.ErrConnectionClosed, false},
		{fmt.Errorf("%w: replicas", ErrStreamMismatch), false},
		{fmt.Errorf("%w: name", ErrInvalidConfig), false},
		{fmt.Errorf("%w: publish to $JS.API.STREAM.INFO.AUDIT", nats.ErrPermissionViolation), false},
		{jetstream.ErrJetStreamNotEnabledForAccount, false}, // a 503, but permanent
		{jetstream.ErrJetStreamNotEnabled, false},
		{jetstream.ErrStreamNotFound, false},
		{api(400, jetstream.JSErrCodeStreamWrongLastSequence), false},
		{errors.New("something else"), false},
	} {
		if got := retryable(c.err); got != c.want {
			t.Errorf("retryable(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
