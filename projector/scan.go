package projector

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go/jetstream"
)

// ScanConfig configures Scan. Zero fields take the defaults shown.
type ScanConfig struct {
	// Stream is the stream's name; Subjects filter what is read (none:
	// every subject).
	Stream   string
	Subjects []string
	// Where to start: FromSeq > 0 starts at that sequence; else a
	// non-zero Since starts at the first message stored at or after that
	// time; else at the first message.
	FromSeq uint64
	Since   time.Time
	// ToSeq is the last sequence handed over (required): the stream's
	// last sequence when the caller began, so that a scan of a live
	// stream ends.
	ToSeq uint64
	// BatchSize is the most messages per fetch and per call of fn.
	// Default 1000.
	BatchSize int
	// RetryFor bounds how long the scan may go without progress, retrying
	// with back-off, before it gives up. Default 2m: a leader election
	// takes 4–10 s, a node's restart longer.
	RetryFor time.Duration
	// InactiveThreshold is how long the server keeps a consumer that
	// nobody pulls from: a crashed scan leaves nothing behind for longer.
	// Default 15s. A scan whose consumer was removed meanwhile (fn was
	// slow) creates another.
	InactiveThreshold time.Duration
	Logger            *slog.Logger // nil discards
}

// Scan reads a stream in sequence order up to cfg.ToSeq, handing fn each
// batch of messages, and rides out what a cluster does meanwhile: "no
// responders", timeouts, a consumer lost with its node, a leader change,
// a reconnection. It reads with an ephemeral, unacknowledged pull consumer
// of its own (the live projectors' durable consumers are untouched) that
// it creates at the sequence after the last one handed to fn, and creates
// again there after any failure: fn sees every message in range once, in
// order, with no gap — a consumer-sequence gap (messages delivered to a
// request whose reply was lost) makes it start over from there too.
// It deletes its consumers when done; their InactiveThreshold removes any
// it could not delete (a node down, a crash).
//
// An error from fn ends the scan with that error. The scan gives up after
// RetryFor without progress, with the last failure.
func Scan(ctx context.Context, js jetstream.JetStream, cfg ScanConfig, fn func([]StreamMsg) error) error {
	setDefault(&cfg.BatchSize, 1000)
	setDefault(&cfg.RetryFor, 2*time.Minute)
	setDefault(&cfg.InactiveThreshold, 15*time.Second)
	if cfg.Stream == "" || cfg.ToSeq == 0 {
		return fmt.Errorf("%w: scan needs a stream and a last sequence", ErrInvalidConfig)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &scanner{js: js, cfg: cfg, log: log, next: max(cfg.FromSeq, 1)}
	defer s.cleanUp(context.WithoutCancel(ctx))
	if s.next > cfg.ToSeq {
		return nil
	}
	b := s.newBackOff(ctx)
	for {
		done, progressed, err := s.step(ctx, fn)
		switch {
		case done:
			return nil
		case err == nil:
			if progressed {
				b.Reset()
			}
			continue
		case errors.Is(err, errFn):
			return errors.Unwrap(err)
		case ctx.Err() != nil:
			return ctx.Err()
		}
		wait := b.NextBackOff()
		if wait == backoff.Stop {
			return fmt.Errorf("read stream %s at seq %d: gave up after %s without progress: %w", cfg.Stream, s.next, cfg.RetryFor, err)
		}
		log.Warn("read stream: retrying", "stream", cfg.Stream, "seq", s.next, "err", err, "retryIn", wait)
		s.dropConsumer(ctx) // start over at s.next with a new one
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// errFn marks an error returned by fn, which ends the scan.
var errFn = errors.New("scan callback")

type fnError struct{ err error }

func (e fnError) Error() string   { return e.err.Error() }
func (e fnError) Unwrap() error   { return e.err }
func (e fnError) Is(t error) bool { return t == errFn }

type scanner struct {
	js   jetstream.JetStream
	cfg  ScanConfig
	log  *slog.Logger
	next uint64 // the first sequence not yet handed to fn
	// handed: fn has had a message (Since no longer says where to start).
	handed bool

	cons jetstream.Consumer
	name string
	// undeleted are consumers a delete failed for (their node was down,
	// no leader yet): tried again at the end.
	undeleted []string
	consSeq   uint64 // the last consumer sequence seen on cons
	empties   int    // fetches in a row that brought nothing
}

func (s *scanner) newBackOff(ctx context.Context) backoff.BackOff {
	return backoff.WithContext(backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(50*time.Millisecond), backoff.WithMaxInterval(2*time.Second),
		backoff.WithMaxElapsedTime(s.cfg.RetryFor)), ctx)
}

// request bounds one request to the server.
const scanRequestTimeout = 5 * time.Second

// createConsumer creates a consumer that starts at s.next (or at Since,
// before anything was handed over).
func (s *scanner) createConsumer(ctx context.Context) error {
	var id [8]byte
	_, _ = rand.Read(id[:])
	name := "auditflow-scan-" + hex.EncodeToString(id[:])
	cc := jetstream.ConsumerConfig{
		Name:              name,
		AckPolicy:         jetstream.AckNonePolicy,
		InactiveThreshold: s.cfg.InactiveThreshold,
		Replicas:          1,
		MemoryStorage:     true,
		DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:       s.next,
	}
	if !s.handed && s.cfg.FromSeq == 0 && !s.cfg.Since.IsZero() {
		since := s.cfg.Since
		cc.DeliverPolicy, cc.OptStartSeq, cc.OptStartTime = jetstream.DeliverByStartTimePolicy, 0, &since
	}
	switch len(s.cfg.Subjects) {
	case 0:
	case 1:
		cc.FilterSubject = s.cfg.Subjects[0]
	default:
		cc.FilterSubjects = s.cfg.Subjects
	}
	rctx, cancel := context.WithTimeout(ctx, scanRequestTimeout)
	defer cancel()
	cons, err := s.js.CreateConsumer(rctx, s.cfg.Stream, cc)
	if err != nil {
		// The server may have created it and the reply been lost.
		s.name = name
		s.dropConsumer(ctx)
		return fmt.Errorf("create consumer: %w", err)
	}
	s.cons, s.name, s.consSeq, s.empties = cons, name, 0, 0
	return nil
}

// dropConsumer deletes the current consumer, if any, best effort: one
// that cannot be deleted now (its node is down) goes after its
// InactiveThreshold.
func (s *scanner) dropConsumer(ctx context.Context) {
	if s.name == "" {
		return
	}
	name := s.name
	s.cons, s.name = nil, ""
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := s.js.DeleteConsumer(rctx, s.cfg.Stream, name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		s.undeleted = append(s.undeleted, name)
		s.log.Debug("read stream: could not delete a scan consumer yet", "consumer", name, "err", err)
	}
}

// cleanUp deletes the current consumer and tries once more those that
// could not be deleted before; what still fails the server removes once
// inactive.
func (s *scanner) cleanUp(ctx context.Context) {
	s.dropConsumer(ctx)
	for _, name := range s.undeleted {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := s.js.DeleteConsumer(rctx, s.cfg.Stream, name)
		cancel()
		if err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			s.log.Debug("read stream: could not delete a scan consumer; the server removes it once inactive", "consumer", name,
				"inactiveThreshold", s.cfg.InactiveThreshold, "err", err)
		}
	}
}

// step fetches one batch and hands it over. done: the scan is complete.
// progressed: something was handed to fn.
func (s *scanner) step(ctx context.Context, fn func([]StreamMsg) error) (done, progressed bool, err error) {
	if s.cons == nil {
		if err := s.createConsumer(ctx); err != nil {
			return false, false, err
		}
	}
	var mb jetstream.MessageBatch
	if s.empties == 0 {
		mb, err = s.cons.FetchNoWait(s.cfg.BatchSize)
	} else {
		mb, err = s.cons.Fetch(s.cfg.BatchSize, jetstream.FetchMaxWait(time.Second))
	}
	if err != nil {
		return false, false, fmt.Errorf("fetch: %w", err)
	}
	batch := make([]StreamMsg, 0, s.cfg.BatchSize)
	var gap error
	beyond := false // a message past ToSeq came: everything up to it has
	for m := range mb.Messages() {
		if gap != nil || beyond {
			continue // drain
		}
		md, err := m.Metadata()
		if err != nil {
			gap = fmt.Errorf("message metadata: %w", err)
			continue
		}
		if md.Sequence.Consumer != s.consSeq+1 {
			// Messages went to a request whose reply was lost: start over.
			gap = fmt.Errorf("consumer sequence %d after %d: messages lost in transit", md.Sequence.Consumer, s.consSeq)
			continue
		}
		s.consSeq = md.Sequence.Consumer
		seq := md.Sequence.Stream
		switch {
		case seq > s.cfg.ToSeq:
			beyond = true
		case seq >= s.next:
			batch = append(batch, StreamMsg{Seq: seq, Subject: m.Subject(), Data: m.Data(), Header: m.Headers()})
		}
	}
	fetchErr := mb.Error()
	if len(batch) > 0 {
		// Advance before calling fn: a message handed over is never
		// handed again, whatever fn does.
		s.next, s.handed, s.empties = batch[len(batch)-1].Seq+1, true, 0
		if err := fn(batch); err != nil {
			return false, true, fnError{err}
		}
	}
	switch {
	case s.next > s.cfg.ToSeq || beyond:
		return true, true, nil
	case gap != nil:
		return false, len(batch) > 0, gap
	case fetchErr != nil && !errors.Is(fetchErr, context.DeadlineExceeded):
		return false, len(batch) > 0, fmt.Errorf("fetch: %w", fetchErr)
	case len(batch) > 0:
		return false, true, nil
	}
	// Nothing came. Either nothing matching is left up to ToSeq, or the
	// consumer is gone or not reachable (no reply at all looks the same).
	s.empties++
	rctx, cancel := context.WithTimeout(ctx, scanRequestTimeout)
	defer cancel()
	info, err := s.cons.Info(rctx)
	switch {
	case err != nil:
		return false, false, fmt.Errorf("consumer info: %w", err)
	case info.Delivered.Consumer != s.consSeq:
		return false, false, fmt.Errorf("consumer delivered %d messages, %d arrived: messages lost in transit", info.Delivered.Consumer, s.consSeq)
	case info.NumPending == 0:
		return true, false, nil // nothing matching is left
	case s.empties > 3:
		return false, false, fmt.Errorf("no messages although %d are pending", info.NumPending)
	}
	return false, false, nil
}

// LookupStream returns the stream (its CachedInfo read now: the last
// sequence, the message count), retrying for up to retryFor (default 2m)
// what a cluster's fail-over makes fail meanwhile (no responders,
// timeouts, no leader yet). A stream that does not exist is an error at
// once.
func LookupStream(ctx context.Context, js jetstream.JetStream, stream string, retryFor time.Duration, log *slog.Logger) (jetstream.Stream, error) {
	setDefault(&retryFor, 2*time.Minute)
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var s jetstream.Stream
	b := backoff.WithContext(backoff.NewExponentialBackOff(backoff.WithInitialInterval(100*time.Millisecond),
		backoff.WithMaxInterval(2*time.Second), backoff.WithMaxElapsedTime(retryFor)), ctx)
	err := backoff.RetryNotify(func() error {
		rctx, cancel := context.WithTimeout(ctx, scanRequestTimeout)
		defer cancel()
		var err error
		s, err = js.Stream(rctx, stream)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return backoff.Permanent(err)
		}
		return err
	}, b, func(err error, wait time.Duration) {
		log.Warn("stream info failed, retrying", "stream", stream, "err", err, "retryIn", wait)
	})
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", stream, err)
	}
	return s, nil
}
