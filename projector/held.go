package projector

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/stores"
)

// Parking: events of a newer schema version than this build reads.
//
// Such an event is the future, not junk (within VersionsAhead): a newer
// projector will store it, so it must not be dead-lettered. Nor may it
// stay on the consumer unacknowledged: every message delivered and not
// acknowledged counts against MaxAckPending, so a few thousand of them —
// which any publisher can write — would stop the projection of every
// pipeline. So the projector parks it: it publishes a pointer (the
// event's stream sequence and version, no data) to the held stream,
// AUDIT_HELD, on <HeldPrefix>.<consumer>.<the event's subject after the
// stream prefix>, and only once the server has stored the pointer
// acknowledges the event. The later events of a parked event's change
// are parked behind it, so a change's events are stored in order.
//
// A projector that starts re-drives its consumer's pointers (redrive):
// oldest first, it reads each event from the audit stream (by sequence,
// so a pointer carries nothing to believe but a sequence), and stores
// those it can read — in order per change, stopping at a change's first
// event it still cannot — then acknowledges their pointers, which removes
// them (the held stream is a work queue). The rest wait for the next start.
//
// Parking is bounded: past Config.HeldCap pointers for the consumer, a
// newer-version event is dead-lettered instead (ErrHeldCapReached), and a
// readable event is stored rather than parked behind its change.
//
// While any pointer waits, Ready fails ("upgrade needed"): the store lacks
// events until a newer projector runs.

// The held stream and its pointers.
const (
	HeldStream        = "AUDIT_HELD"
	DefaultHeldPrefix = "audit.held"
	DefaultHeldCap    = 100_000
	// HeaderHeldSeq and HeaderHeldVersion are a pointer's: the event's
	// sequence on the audit stream, and its schema version (0 for an
	// event this build reads, parked behind an earlier one of its change).
	HeaderHeldSeq     = "Auditflow-Held-Sequence"
	HeaderHeldVersion = "Auditflow-Held-Version"
)

// heldAckWait is how long the held stream's consumer waits before handing a
// pointer a crashed re-drive had fetched to the next one.
var heldAckWait = 30 * time.Second

// heldRefreshEvery is how often a running projector reads the held
// stream's count for its consumer (for readiness, and for the changes
// another process sharing the consumer has parked).
var heldRefreshEvery = 5 * time.Second

// parking is what the projector knows of its consumer's parked events.
type parking struct {
	mu sync.Mutex
	// subjects are the changes (audit subjects) with parked events: their
	// later events are parked behind them.
	subjects map[string]bool
	// seqs are the parked sequences found at start, for the catch-up,
	// which must not store what is parked.
	seqs map[uint64]bool
	// count is the pointers waiting: the stream's count at the last
	// refresh plus those parked since.
	count int
	// versions counts the newer versions seen, for the reason Ready gives.
	versions map[int]int
	// err is the last failure to read the held stream, "" if none.
	err string
	// any is whether subjects has any: the fetcher asks has for every
	// message, and nearly always nothing is parked.
	any atomic.Bool
}

func (k *parking) has(subject string) bool {
	if !k.any.Load() {
		return false
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.subjects[subject]
}

// setSubjects replaces subjects; k.mu held.
func (k *parking) setSubjects(m map[string]bool) {
	k.subjects = m
	k.any.Store(len(m) > 0)
}

func (k *parking) parkedSeq(seq uint64) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.seqs[seq]
}

func (k *parking) waiting() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.count
}

func (k *parking) add(subject string, version int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.subjects == nil {
		k.subjects, k.versions = map[string]bool{}, map[int]int{}
	}
	k.subjects[subject] = true
	k.any.Store(true)
	k.count++
	if version > 0 {
		k.versions[version]++
	}
}

// reason is Ready's words for what waits, or "".
func (k *parking) reason() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []string
	if k.count > 0 {
		vs := slices.Sorted(maps.Keys(k.versions))
		what := "events of a newer schema version than this projector reads (" + strconv.Itoa(events.SchemaVersion) + ")"
		if len(vs) > 0 {
			parts := make([]string, len(vs))
			for i, v := range vs {
				parts[i] = strconv.Itoa(v)
			}
			what = "events of schema version " + strings.Join(parts, ", ") + " (this projector reads " + strconv.Itoa(events.SchemaVersion) + ")"
		}
		out = append(out, fmt.Sprintf("upgrade needed: %d %s and the later events of their changes are parked in %s; a projector that reads them stores them when it starts",
			k.count, what, HeldStream))
	}
	if k.err != "" {
		out = append(out, "held stream "+HeldStream+" unreadable: "+k.err)
	}
	return strings.Join(out, "; ")
}

// heldSubject is the pointer's subject for an event on subject.
func (p *Projector) heldSubject(subject string) string {
	return p.cfg.HeldPrefix + "." + p.cfg.Consumer + "." + strings.TrimPrefix(subject, p.cfg.Stream.SubjectPrefix+".")
}

// auditSubject is the reverse of heldSubject.
func (p *Projector) auditSubject(held string) string {
	return p.cfg.Stream.SubjectPrefix + "." + strings.TrimPrefix(held, p.cfg.HeldPrefix+"."+p.cfg.Consumer+".")
}

// parkItem is a delivery to park: version is the event's newer schema
// version, or 0 for a readable event parked behind its change's.
type parkItem struct {
	d       delivery
	version int
}

// park parks items (see the top of this file), in order, and acknowledges
// each once its pointer is stored. A newer-version event past HeldCap is
// returned, to be dead-lettered. A pointer that cannot be published
// leaves its event on the stream for later.
func (p *Projector) park(ctx context.Context, items []parkItem) (poison []delivery) {
	type pending struct {
		it  parkItem
		ack jetstream.PubAckFuture
	}
	var sent []pending
	for _, it := range items {
		if it.version > 0 && p.parked.waiting()+len(sent) >= p.cfg.HeldCap {
			it.d.reason = fmt.Errorf("%w: %d events already wait in %s for consumer %s (schema version %d; this projector reads %d)",
				ErrHeldCapReached, p.parked.waiting(), HeldStream, p.cfg.Consumer, it.version, events.SchemaVersion)
			poison = append(poison, it.d)
			continue
		}
		f, err := p.js.PublishMsgAsync(p.pointerMsg(it.d.msg.Subject(), it.d.seq, it.version))
		if err != nil {
			p.parkFailed(it.d, err)
			continue
		}
		sent = append(sent, pending{it, f})
	}
	timeout := time.NewTimer(min(deadLetterTimeout, p.cfg.AckWait/2))
	defer timeout.Stop()
	for _, s := range sent {
		var err error
		select {
		case <-s.ack.Ok():
		case err = <-s.ack.Err():
		case <-timeout.C:
			err = errors.New("no acknowledgement from the server in time")
		case <-ctx.Done():
			err = ctx.Err()
		}
		if err != nil {
			p.parkFailed(s.it.d, err)
			continue
		}
		p.parked.add(s.it.d.msg.Subject(), s.it.version)
		p.held.Add(1)
		p.progress.finish(s.it.d.seq) // settled: a newer projector stores it
		p.settle(s.it.d.msg, s.it.d.msg.Ack)
		p.health.progressed()
		if s.it.version > 0 && p.heldLog.allow(10*time.Second) {
			p.log.Error("parked events of a newer schema version than this projector reads: upgrade it; a newer projector stores them when it starts",
				"version", s.it.version, "reads", events.SchemaVersion, "seq", s.it.d.seq, "subject", s.it.d.msg.Subject(),
				"to", HeldStream, "parkedSoFar", p.held.Load())
		}
	}
	return poison
}

// pointerMsg is the pointer to the event at seq on subject.
func (p *Projector) pointerMsg(subject string, seq uint64, version int) *nats.Msg {
	m := nats.NewMsg(p.heldSubject(subject))
	m.Header.Set(HeaderHeldSeq, strconv.FormatUint(seq, 10))
	m.Header.Set(HeaderHeldVersion, strconv.Itoa(version))
	// A redelivered event parked twice is one pointer.
	m.Header.Set(jetstream.MsgIDHeader, "held:"+p.cfg.Consumer+":"+strconv.FormatUint(seq, 10))
	return m
}

// parkRead parks an event read from the stream rather than delivered (the
// catch-up after a changed consumer was restored).
func (p *Projector) parkRead(ctx context.Context, subject string, seq uint64, version int) error {
	if _, err := p.js.PublishMsg(ctx, p.pointerMsg(subject, seq, version)); err != nil {
		return fmt.Errorf("projector: parking the event at seq %d: %w", seq, err)
	}
	p.parked.add(subject, version)
	p.held.Add(1)
	return nil
}

// parkFailed leaves d on the stream for later: its pointer was not stored.
func (p *Projector) parkFailed(d delivery, err error) {
	p.heldFailures.Add(1)
	delay := growingDelay(d.delivered, busyNakMin, p.cfg.AckWait)
	p.settle(d.msg, func() error { return d.msg.NakWithDelay(delay) })
	if p.heldLog.allow(10 * time.Second) {
		p.log.Warn("could not park an event in the held stream; it goes back to the stream for later",
			"seq", d.seq, "subject", d.msg.Subject(), "err", err, "failuresSoFar", p.heldFailures.Load())
	}
}

// refreshHeld reads how many pointers wait for the consumer and for which
// changes, from the held stream's state.
func (p *Projector) refreshHeld(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, lagTimeout)
	defer cancel()
	parked, err := Parked(ctx, p.js, p.cfg.HeldPrefix, p.cfg.Consumer)
	p.parked.mu.Lock()
	defer p.parked.mu.Unlock()
	if err != nil {
		p.parked.err = err.Error()
		return
	}
	p.parked.err = ""
	subjects := make(map[string]bool, len(parked))
	n := 0
	for subj, c := range parked {
		subjects[p.auditSubject(subj)] = true
		n += int(c)
	}
	p.parked.setSubjects(subjects)
	p.parked.count = n
	if n == 0 {
		p.parked.versions = map[int]int{}
	}
}

// Parked returns the pointers waiting in HeldStream for consumer, by
// pointer subject (<heldPrefix>.<consumer>.<pipeline>.<change>): what a
// running projector, `auditflow stats` and the console count.
func Parked(ctx context.Context, js jetstream.JetStream, heldPrefix, consumer string) (map[string]uint64, error) {
	s, err := js.Stream(ctx, HeldStream)
	if err != nil {
		return nil, err
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(heldPrefix+"."+consumer+".>"))
	if err != nil {
		return nil, err
	}
	return info.State.Subjects, nil
}

// heldLoop refreshes the held state every heldRefreshEvery until ctx ends,
// and makes a re-drive pass whenever pointers wait and their count has
// changed since the last pass, or redriveEvery has passed.
func (p *Projector) heldLoop(ctx context.Context) {
	t := time.NewTicker(heldRefreshEvery)
	defer t.Stop()
	lastCount, lastPass := p.parked.waiting(), time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		p.refreshHeld(ctx)
		n := p.parked.waiting()
		if n == 0 || (n == lastCount && time.Since(lastPass) < redriveEvery) {
			continue
		}
		if err := p.redrive(ctx); err != nil && ctx.Err() == nil {
			p.log.Warn("re-drive pass failed; the next one retries", "err", err)
		}
		lastCount, lastPass = p.parked.waiting(), time.Now()
	}
}

// pointer is a parked event's pointer as fetched.
type pointer struct {
	msg     jetstream.Msg
	subject string // the event's audit subject
	seq     uint64
	version int
}

// setupHeld creates or updates the consumer that re-drives the consumer's
// parked events.
func (p *Projector) setupHeld(ctx context.Context) error {
	cons, err := p.js.CreateOrUpdateConsumer(ctx, HeldStream, jetstream.ConsumerConfig{
		Durable:       p.cfg.Consumer,
		Description:   "auditflow projector into " + p.cfg.StoreName + ": re-drives parked events",
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       heldAckWait,
		MaxDeliver:    -1,
		MaxAckPending: -1,
		FilterSubject: p.cfg.HeldPrefix + "." + p.cfg.Consumer + ".>",
	})
	if err != nil {
		return fmt.Errorf("projector: consumer %s on %s: %w", p.cfg.Consumer, HeldStream, err)
	}
	p.heldCons = cons
	return nil
}

// redriveEvery bounds how long a projector goes without a re-drive pass
// while pointers wait (one also runs whenever their count changes): a
// newer projector picks up what an older one, still running beside it in
// a rolling upgrade, parks.
var redriveEvery = time.Minute

// redrive makes a re-drive pass (see the top of this file): it stores the
// parked events this build reads, in order per change, and hands the rest
// back at once for the next pass or another projector. New calls it before
// the catch-up; heldLoop while pointers wait.
func (p *Projector) redrive(ctx context.Context) error {
	ptrs, err := fetchPointers(ctx, p.heldCons, p)
	nakAll := func() {
		for _, q := range ptrs {
			_ = q.msg.Nak()
		}
	}
	if err != nil {
		nakAll()
		return fmt.Errorf("projector: reading the parked events: %w", err)
	}
	if len(ptrs) == 0 {
		return nil
	}
	slices.SortStableFunc(ptrs, func(a, b pointer) int { return cmp.Compare(a.seq, b.seq) })
	audit, err := p.js.Stream(ctx, p.cfg.Stream.Name)
	if err != nil {
		nakAll()
		return fmt.Errorf("projector: stream %s: %w", p.cfg.Stream.Name, err)
	}
	// blocked: changes with an event still unread, whose later events wait
	// behind it. unreadable: versions this build's decoder has refused in
	// this pass, whose other pointers need not be read.
	blocked, unreadable := map[string]bool{}, map[int]bool{}
	var keep, done []pointer
	var recs []stores.Record
	var recPtrs []pointer
	for _, q := range ptrs {
		if blocked[q.subject] || unreadable[q.version] {
			blocked[q.subject] = true
			keep = append(keep, q)
			continue
		}
		raw, err := audit.GetMsg(ctx, q.seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) || (err == nil && raw.Subject != q.subject) {
			// Nothing to store: the audit stream denies deletes, so only a
			// forged pointer names a message that is not there.
			p.log.Error("a parked pointer names no event of its change on the audit stream; dropped", "seq", q.seq,
				"subject", q.subject, "err", err)
			done = append(done, q)
			continue
		}
		if err != nil {
			blocked[q.subject] = true
			keep = append(keep, q)
			continue
		}
		v := decide(p.cfg.Decode, p.cfg.Stream.SubjectPrefix, p.cfg.Trust,
			StreamMsg{Seq: raw.Sequence, Subject: raw.Subject, Data: raw.Data, Header: raw.Header})
		switch v.outcome {
		case outStore:
			recs, recPtrs = append(recs, v.rec), append(recPtrs, q)
		case outHold:
			blocked[q.subject], unreadable[q.version] = true, q.version > 0
			keep = append(keep, q)
		default:
			o := original{stream: p.cfg.Stream.Name, subject: raw.Subject, seq: raw.Sequence, data: raw.Data, header: raw.Header}
			if err := p.publishDeadLetter(ctx, o, v.reason); err != nil {
				blocked[q.subject] = true
				keep = append(keep, q)
				continue
			}
			p.deadLettered.Add(1)
			done = append(done, q)
		}
	}
	// Their chains, from the stream: parked events are read out of order.
	idx := make([]int, len(recs))
	subjects := make([]string, len(recs))
	ptrsTo := make([]*stores.Record, len(recs))
	for i := range recs {
		idx[i], subjects[i], ptrsTo[i] = i, recPtrs[i].subject, &recs[i]
	}
	failed := lookupAll(ctx, p.lookup, subjects, ptrsTo, idx)
	var stored []stores.Record
	for i, r := range recs {
		if failed[i] != nil || blocked[recPtrs[i].subject] {
			keep = append(keep, recPtrs[i])
			continue
		}
		stored = append(stored, r)
		done = append(done, recPtrs[i])
	}
	for b := range slices.Chunk(stored, p.cfg.BatchSize) {
		if err := p.applyRetrying(ctx, stores.Batch{Checkpoint: p.cfg.Consumer, Records: b}); err != nil {
			nakAll()
			return fmt.Errorf("projector: storing parked events: %w", err)
		}
	}
	for _, r := range stored {
		p.watchChain(r)
	}
	for _, q := range done {
		_ = q.msg.Ack()
	}
	p.parked.mu.Lock()
	if p.parked.seqs == nil {
		p.parked.seqs, p.parked.versions = map[uint64]bool{}, map[int]int{}
		p.parked.setSubjects(map[string]bool{})
	}
	for _, q := range done {
		delete(p.parked.subjects, q.subject) // unless kept below
	}
	for _, q := range keep {
		_ = q.msg.Nak()
		p.parked.subjects[q.subject], p.parked.seqs[q.seq] = true, true
		if q.version > 0 {
			p.parked.versions[q.version]++
		}
	}
	// What this pass saw; pointers another process holds now are counted
	// at the next refresh (the acknowledgements above may not have
	// removed theirs yet, so a refresh now could count them again).
	p.parked.count = len(keep)
	p.parked.any.Store(len(p.parked.subjects) > 0)
	p.parked.mu.Unlock()
	p.redriven.Add(uint64(len(stored)))
	level := slog.LevelDebug
	if len(done) > 0 {
		level = slog.LevelInfo
	}
	p.log.Log(ctx, level, "re-drive pass over the parked events", "stored", len(stored), "stillWaiting", len(keep),
		"dropped", len(done)-len(stored))
	return nil
}

// fetchPointers fetches every pointer the held consumer has for this
// process now, stopping at the first one seen twice.
func fetchPointers(ctx context.Context, cons jetstream.Consumer, p *Projector) ([]pointer, error) {
	var out []pointer
	seen := map[uint64]bool{}
	for ctx.Err() == nil {
		batch, err := cons.FetchNoWait(1000)
		if err != nil {
			return out, err
		}
		n, again := 0, false
		for m := range batch.Messages() {
			n++
			md, err := m.Metadata()
			if err != nil || seen[md.Sequence.Stream] {
				_ = m.Nak()
				again = true // a redelivery: everything has been read once
				continue
			}
			seen[md.Sequence.Stream] = true
			seq, err1 := strconv.ParseUint(m.Headers().Get(HeaderHeldSeq), 10, 64)
			version, err2 := strconv.Atoi(m.Headers().Get(HeaderHeldVersion))
			if err1 != nil || err2 != nil || seq == 0 {
				p.log.Error("a malformed pointer in the held stream; dropped", "subject", m.Subject())
				_ = m.Term()
				continue
			}
			out = append(out, pointer{msg: m, subject: p.auditSubject(m.Subject()), seq: seq, version: version})
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			return out, err
		}
		if n == 0 || again {
			return out, nil
		}
	}
	return out, ctx.Err()
}
