package projector

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// The durable consumer is the projector's cursor on the stream, and what
// its checkpoint is proved from (checkpoint.go): the ack floor counts only
// if the consumer delivers every event of the stream's subjects. So the
// projector checks its configuration each time it reads the consumer's
// state (about once a second), and at start:
//
//   - changed (another filter, a pause, an inactivity threshold that
//     would delete it, limits that skip or drop deliveries): the ack floor
//     no longer raises the checkpoint — a narrowed filter moves the floor
//     past events never delivered, and the consumer will not deliver them
//     again. The fetcher restores the configuration and stores, from the
//     checkpoint (which did not move meanwhile) to the stream's last
//     event, what the change may have skipped; logged and counted
//     (auditflow_projector_consumer_restored_total), and Ready says so for
//     a while. Should the restore fail, Ready and Live fail naming each
//     difference, and a restart (what a failed liveness probe does) does
//     the same at start.
//   - deleted: the fetcher recreates it, delivering from the store's
//     contiguous checkpoint + 1, so nothing after the checkpoint is missed
//     (what is applied again changes nothing); logged and counted
//     (auditflow_projector_consumer_recreated_total).
//   - its stream deleted: Ready fails; nothing is recreated (a deleted
//     stream never comes back empty; see Config.CreateStreams).

// consumerConfig is the durable consumer as the projector wants it. An
// existing consumer keeps where it delivers from (the server cannot change
// that): all of the stream, or from a checkpoint it was recreated at.
func (p *Projector) consumerConfig(existing *jetstream.ConsumerInfo) jetstream.ConsumerConfig {
	c := jetstream.ConsumerConfig{
		Durable:       p.cfg.Consumer,
		Description:   "auditflow projector into " + p.cfg.StoreName,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       p.cfg.AckWait,
		MaxDeliver:    -1, // a store outage must never drop an event
		MaxAckPending: p.cfg.MaxAckPending,
		FilterSubject: p.cfg.Stream.SubjectPrefix + ".>",
	}
	if existing != nil && existing.Config.DeliverPolicy == jetstream.DeliverByStartSequencePolicy {
		c.DeliverPolicy, c.OptStartSeq = jetstream.DeliverByStartSequencePolicy, existing.Config.OptStartSeq
	}
	return c
}

// Difference is one setting of a durable consumer that is not what a
// projector needs: the field, what it should be and what it is.
type Difference struct {
	Field, Expected, Actual string
}

func (d Difference) String() string {
	return fmt.Sprintf("%s is %s, want %s", d.Field, d.Actual, d.Expected)
}

// Drift lists how a projector's durable consumer configuration c differs
// from what it needs, for a projector reading subjects prefix.>: every
// event of the filter, acknowledged one by one, redelivered until stored,
// pulled, not paused, never deleted for inactivity. It is empty for a
// consumer the projector created (from the start, or recreated from a
// checkpoint). `auditflow init` reports the same differences.
func Drift(c jetstream.ConsumerConfig, prefix string) []Difference {
	var out []Difference
	add := func(field string, want, got any) {
		out = append(out, Difference{Field: field, Expected: fmt.Sprint(want), Actual: fmt.Sprint(got)})
	}
	filter := prefix + ".>"
	filters := c.FilterSubjects
	if c.FilterSubject != "" {
		filters = append([]string{c.FilterSubject}, filters...)
	}
	if len(filters) != 1 || filters[0] != filter {
		add("filter_subject", filter, strings.Join(filters, ", "))
	}
	if c.AckPolicy != jetstream.AckExplicitPolicy {
		add("ack_policy", jetstream.AckExplicitPolicy, c.AckPolicy)
	}
	if c.DeliverPolicy != jetstream.DeliverAllPolicy && c.DeliverPolicy != jetstream.DeliverByStartSequencePolicy {
		add("deliver_policy", "all (or by_start_sequence after a recreation)", c.DeliverPolicy)
	}
	if c.MaxDeliver > 0 {
		add("max_deliver", "unlimited", c.MaxDeliver)
	}
	if c.InactiveThreshold != 0 {
		add("inactive_threshold", 0, c.InactiveThreshold)
	}
	if c.PauseUntil != nil && c.PauseUntil.After(time.Now()) {
		add("pause_until", "unset", c.PauseUntil.UTC().Format(time.RFC3339))
	}
	if c.RateLimit != 0 {
		add("rate_limit_bps", 0, c.RateLimit)
	}
	if c.HeadersOnly {
		add("headers_only", false, true)
	}
	if c.ReplayPolicy != jetstream.ReplayInstantPolicy {
		add("replay_policy", jetstream.ReplayInstantPolicy, c.ReplayPolicy)
	}
	if c.DeliverSubject != "" {
		add("deliver_subject", "none (a pull consumer)", c.DeliverSubject)
	}
	return out
}

// drift is Drift of this projector's consumer. Its ack wait and max ack
// pending are not judged: projectors sharing a consumer may set them
// differently (the last one to start sets them), and neither skips events.
func (p *Projector) drift(c jetstream.ConsumerConfig) []string {
	var out []string
	for _, d := range Drift(c, p.cfg.Stream.SubjectPrefix) {
		out = append(out, d.String())
	}
	return out
}

// consumerReason is Ready's words for what is wrong with the consumer or
// its stream, or "".
func (p *Projector) consumerReason() string {
	if p.health.lastProgress().IsZero() { // Run has not started: New just set the consumer up
		return ""
	}
	st, _, err := p.lag.get()
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		return fmt.Sprintf("stream %s does not exist: nothing can be consumed (restore it: auditflow restore)", p.cfg.Stream.Name)
	case errors.Is(err, jetstream.ErrConsumerNotFound):
		return fmt.Sprintf("durable consumer %s does not exist on %s (deleted?): the projector recreates it from the store's checkpoint",
			p.cfg.Consumer, p.cfg.Stream.Name)
	case err != nil:
		return fmt.Sprintf("consumer %s unreadable: %v", p.cfg.Consumer, err)
	case len(st.drift) > 0:
		return p.driftReason(st.drift)
	}
	if at := p.recreatedAt.Load(); at != 0 {
		since := time.Since(time.Unix(0, at))
		if since < recreatedShown || st.lag > 0 {
			return fmt.Sprintf("durable consumer %s was deleted %s ago and recreated from the store's checkpoint (%d messages to go)",
				p.cfg.Consumer, since.Round(time.Second), st.lag)
		}
		p.recreatedAt.CompareAndSwap(at, 0)
	}
	if at := p.restoredAt.Load(); at != 0 {
		if since := time.Since(time.Unix(0, at)); since < recreatedShown {
			return fmt.Sprintf("durable consumer %s was changed outside the projector (%s) and restored %s ago; what the change skipped was stored from the checkpoint",
				p.cfg.Consumer, p.restoredDrift.Load(), since.Round(time.Second))
		}
		p.restoredAt.CompareAndSwap(at, 0)
	}
	return ""
}

// restoreConsumer puts the durable consumer's configuration back after it
// was changed (see the top of this file), stores what the change may have
// skipped, and reports whether it did. The fetcher calls it when the
// consumer's state shows drift.
func (p *Projector) restoreConsumer(ctx context.Context, drift []string) (ok bool) {
	p.restoreFailing.CompareAndSwap(0, time.Now().UnixNano())
	defer func() {
		if ok {
			p.restoreFailing.Store(0)
		}
	}()
	what := strings.Join(drift, "; ")
	p.log.Error("the durable consumer was changed outside the projector: restoring it, and storing from the checkpoint what the change may have skipped",
		"consumer", p.cfg.Consumer, "drift", what)
	cp, err := p.store.Checkpoint(ctx, p.cfg.Consumer)
	if err != nil {
		p.log.Warn("restoring the consumer: the store's checkpoint cannot be read; retrying", "err", err)
		return false
	}
	c, err := p.js.Consumer(ctx, p.cfg.Stream.Name, p.cfg.Consumer)
	if err != nil {
		p.log.Warn("restoring the consumer: it cannot be read; retrying", "err", err)
		return false
	}
	if _, err := p.js.CreateOrUpdateConsumer(ctx, p.cfg.Stream.Name, p.consumerConfig(c.CachedInfo())); err != nil {
		p.log.Warn("restoring the consumer failed; retrying", "err", err)
		return false
	}
	s, err := p.js.Stream(ctx, p.cfg.Stream.Name)
	if err != nil {
		p.log.Warn("restoring the consumer: the stream cannot be read; retrying", "err", err)
		return false
	}
	last := s.CachedInfo().State.LastSeq
	if last > cp {
		if _, err := p.catchUp(ctx, cp, last, "the durable consumer was changed and restored"); err != nil {
			p.log.Warn("restoring the consumer: storing what the change skipped failed; retrying", "err", err)
			return false
		}
	}
	p.progress.raise(last)
	p.restored.Add(1)
	p.restoredDrift.Store(what)
	p.restoredAt.Store(time.Now().UnixNano())
	p.lag.forget()
	return true
}

// recreatedShown is how long Ready reports a recreated consumer at least:
// long enough for probes and alerts to see the incident.
var recreatedShown = 10 * time.Second

func (p *Projector) driftReason(drift []string) string {
	return fmt.Sprintf("durable consumer %s was changed outside the projector (%s): its ack floor no longer proves the checkpoint; restart the projector, which restores the consumer and stores what the change skipped",
		p.cfg.Consumer, strings.Join(drift, "; "))
}

// Live reports whether a restart would not help: it fails when the
// projector is stopping, or its consumer was changed and restoring it in
// place has failed for restoreGiveUp (a restart restores it at start).
func (p *Projector) Live() error {
	if p.stopping.Load() {
		return fmt.Errorf("%w: shutting down", ErrNotReady)
	}
	since := p.restoreFailing.Load()
	if since == 0 || time.Since(time.Unix(0, since)) < restoreGiveUp {
		return nil
	}
	if st, _, err := p.lag.get(); err == nil && len(st.drift) > 0 {
		return fmt.Errorf("%w: %s", ErrNotReady, p.driftReason(st.drift))
	}
	return nil
}

// restoreGiveUp is how long restoring a changed consumer in place may fail
// before Live asks for a restart.
var restoreGiveUp = 30 * time.Second

// recreateConsumer creates the durable consumer again after it was
// deleted, delivering from the store's contiguous checkpoint + 1, and
// reports whether it did. The fetcher calls it when a fetch fails and the
// consumer is gone.
func (p *Projector) recreateConsumer(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*lagTimeout)
	defer cancel()
	if _, err := p.cons.Info(ctx); !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return false
	}
	cp, err := p.store.Checkpoint(ctx, p.cfg.Consumer)
	if err != nil {
		p.log.Warn("the durable consumer is gone, and the store's checkpoint cannot be read to recreate it; retrying", "err", err)
		return false
	}
	c := p.consumerConfig(nil)
	c.DeliverPolicy, c.OptStartSeq = jetstream.DeliverByStartSequencePolicy, cp+1
	if _, err := p.js.CreateConsumer(ctx, p.cfg.Stream.Name, c); err != nil && !errors.Is(err, jetstream.ErrConsumerExists) {
		p.log.Warn("could not recreate the deleted durable consumer; retrying", "consumer", p.cfg.Consumer, "err", err)
		return false
	}
	p.recreated.Add(1)
	p.recreatedAt.Store(time.Now().UnixNano())
	p.lag.forget()
	p.log.Error("the durable consumer was deleted: recreated it, delivering from the store's contiguous checkpoint + 1 (events after it are applied again, which changes nothing)",
		"consumer", p.cfg.Consumer, "stream", p.cfg.Stream.Name, "fromSeq", cp+1, "recreatedSoFar", p.recreated.Load())
	return true
}
