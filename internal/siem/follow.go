package siem

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrConsumerMismatch says the durable consumer exists with another
// filter than the one asked for.
var ErrConsumerMismatch = errors.New("siem: the durable consumer exists with another filter")

// ackWait is how long the server waits for a batch's acknowledgement
// before it delivers the batch again.
const ackWait = time.Minute

// Follow writes the stream's messages as they come, from the durable
// consumer Config.Consumer (created at Config.Since, or the first message,
// if it does not exist), until ctx ends. Each batch is written and flushed
// before it is acknowledged: a Follow that starts again continues after the
// last line it wrote, and writes again at most the batch that was written
// but not acknowledged (at least once: deduplicate on auditflowseq).
func (f *Feed) Follow(ctx context.Context, w io.Writer) error {
	cons, fresh, err := f.consumer(ctx)
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(w, 256<<10)
	// A consumer created here from the first message delivers every
	// message of its subjects: it knows that a subject not seen yet has
	// nothing before it.
	f.chains.reset(fresh && f.cfg.Since.IsZero())
	var lastCons uint64
	var ms []msg
	var last jetstream.Msg
	collect := func(batch jetstream.MessageBatch) {
		for m := range batch.Messages() {
			md, err := m.Metadata()
			if err != nil {
				continue
			}
			if lastCons != 0 && md.Sequence.Consumer != lastCons+1 {
				f.chains.reset(false) // a hole: someone else took messages
			}
			lastCons = md.Sequence.Consumer
			ms = append(ms, msg{seq: md.Sequence.Stream, subject: m.Subject(), data: m.Data(), header: m.Headers(),
				redelivered: md.NumDelivered > 1})
			last = m
		}
	}
	acked := cons.CachedInfo().AckFloor.Stream // written and acknowledged up to here
	gone := false                              // the consumer was deleted: make it again first
	for ctx.Err() == nil {
		ms = ms[:0]
		if gone {
			c, err := f.recreate(ctx, acked)
			if err != nil {
				f.cfg.Logger.Warn("feed: creating the durable consumer again failed; trying again", "consumer", f.cfg.Consumer, "err", err)
				sleep(ctx, time.Second)
				continue
			}
			cons, lastCons, gone = c, 0, false
			f.chains.reset(false)
		}
		// What is there now, up to a batch; when nothing is, wait for the
		// next message (waiting for a full batch would hold lines back
		// while events trickle in).
		batch, err := cons.FetchNoWait(f.cfg.BatchSize)
		if err == nil {
			collect(batch)
			err = batch.Error()
			if err == nil && len(ms) == 0 {
				fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				if batch, err = cons.Fetch(1, jetstream.FetchContext(fctx)); err == nil {
					collect(batch)
					if err = batch.Error(); errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) {
						err = nil // nothing came
					}
				}
				cancel()
			}
		}
		if len(ms) == 0 && (errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrConsumerDeleted)) {
			// Deleted under us (by hand, or with a node): made again after
			// the last line written and acknowledged, so that nothing is
			// skipped and at most that is written twice.
			f.cfg.Logger.Warn("feed: the durable consumer is gone; creating it again after the last line acknowledged",
				"consumer", f.cfg.Consumer, "after", acked, "err", err)
			gone = true
			continue
		}
		if err != nil && len(ms) == 0 {
			if ctx.Err() != nil {
				break
			}
			f.cfg.Logger.Warn("feed: fetching from the durable consumer failed; trying again", "consumer", f.cfg.Consumer, "err", err)
			sleep(ctx, time.Second)
			continue
		}
		if len(ms) == 0 {
			continue
		}
		if err := f.write(ctx, bw, ms); err != nil {
			return err
		}
		if err := bw.Flush(); err != nil {
			return err
		}
		// The consumer acknowledges all: the batch's last message acks it
		// all. Even when ctx has ended: what was written is acknowledged.
		actx, acancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		err = last.DoubleAck(actx)
		acancel()
		if err != nil {
			return fmt.Errorf("acknowledging up to sequence %d (the lines are written; they will be written again): %w", f.stats.LastSeq, err)
		}
		acked = f.stats.LastSeq
	}
	return nil
}

// recreate creates the durable consumer again, delivering from the
// sequence after acked (from the configured start if nothing was).
func (f *Feed) recreate(ctx context.Context, acked uint64) (jetstream.Consumer, error) {
	cfg := f.consumerConfig()
	if acked > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq, cfg.OptStartTime = jetstream.DeliverByStartSequencePolicy, acked+1, nil
	}
	c, err := f.js.CreateConsumer(ctx, f.cfg.Stream.Name, cfg)
	if err != nil {
		return nil, fmt.Errorf("creating the durable consumer %s again: %w", f.cfg.Consumer, err)
	}
	// Created while the server was still removing the old one, it may
	// come back with the old one's state (measured: delivering from an
	// early sequence again). Then it is removed and made again.
	if info := c.CachedInfo(); acked > 0 && info.Delivered.Stream != acked {
		if err := f.js.DeleteConsumer(ctx, f.cfg.Stream.Name, f.cfg.Consumer); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return nil, fmt.Errorf("removing the durable consumer %s, made again with another state: %w", f.cfg.Consumer, err)
		}
		return nil, fmt.Errorf("the durable consumer %s came back delivered up to %d, not %d", f.cfg.Consumer, info.Delivered.Stream, acked)
	}
	return c, nil
}

// consumer opens the durable consumer, creating it if it does not exist
// (fresh).
func (f *Feed) consumer(ctx context.Context) (jetstream.Consumer, bool, error) {
	filter := f.cfg.filter()
	c, err := f.js.Consumer(ctx, f.cfg.Stream.Name, f.cfg.Consumer)
	if err == nil {
		if got := c.CachedInfo().Config; !slices.Equal(filters(got), []string{filter}) {
			return nil, false, fmt.Errorf("%w: %s reads %v, not %s: give another --consumer, or delete it (nats consumer rm %s %s)",
				ErrConsumerMismatch, f.cfg.Consumer, filters(got), filter, f.cfg.Stream.Name, f.cfg.Consumer)
		}
		if info := c.CachedInfo(); info.NumAckPending > 0 {
			return f.rewind(ctx, info)
		}
		return c, false, nil
	}
	if !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil, false, fmt.Errorf("consumer %s: %w", f.cfg.Consumer, err)
	}
	c, err = f.js.CreateConsumer(ctx, f.cfg.Stream.Name, f.consumerConfig())
	if err != nil {
		return nil, false, fmt.Errorf("creating the durable consumer %s: %w", f.cfg.Consumer, err)
	}
	return c, true, nil
}

// consumerConfig is the durable consumer as Follow creates it.
func (f *Feed) consumerConfig() jetstream.ConsumerConfig {
	cfg := jetstream.ConsumerConfig{Durable: f.cfg.Consumer, FilterSubject: f.cfg.filter(), AckPolicy: jetstream.AckAllPolicy,
		AckWait: ackWait, MaxAckPending: 4 * f.cfg.BatchSize, Description: "auditflow feed --follow (SIEM)"}
	if !f.cfg.Since.IsZero() {
		since := f.cfg.Since
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &since
	}
	return cfg
}

// rewind makes the durable consumer start again after its acknowledgement
// floor. Messages delivered but not acknowledged are what a previous
// Follow may not have written (it stopped between fetching and
// acknowledging): the server would deliver them again only after their
// ack wait, after newer ones, and acknowledging a newer one would
// acknowledge them unwritten (the consumer acknowledges all). So the
// consumer is made again, at the sequence after its floor: the feed writes
// them now, in order. One Follow per consumer: this takes the messages of
// another one reading it.
func (f *Feed) rewind(ctx context.Context, info *jetstream.ConsumerInfo) (jetstream.Consumer, bool, error) {
	cfg := info.Config
	if floor := info.AckFloor.Stream; floor > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq, cfg.OptStartTime = jetstream.DeliverByStartSequencePolicy, floor+1, nil
	}
	f.cfg.Logger.Info("feed: the durable consumer has deliveries not acknowledged (a previous feed stopped before acknowledging): starting again after its floor",
		"consumer", cfg.Durable, "ackFloor", info.AckFloor.Stream, "unacknowledged", info.NumAckPending)
	if err := f.js.DeleteConsumer(ctx, f.cfg.Stream.Name, cfg.Durable); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil, false, fmt.Errorf("starting the durable consumer %s again after its floor: %w", cfg.Durable, err)
	}
	c, err := f.js.CreateConsumer(ctx, f.cfg.Stream.Name, cfg)
	if err != nil {
		return nil, false, fmt.Errorf("starting the durable consumer %s again after its floor: %w", cfg.Durable, err)
	}
	return c, false, nil
}

func filters(c jetstream.ConsumerConfig) []string {
	if c.FilterSubject != "" {
		return []string{c.FilterSubject}
	}
	return c.FilterSubjects
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
