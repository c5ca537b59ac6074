package siem

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/trust"
)

// ErrInvalidConfig is wrapped by every error about a Config.
var ErrInvalidConfig = errors.New("siem: invalid config")

// DefaultConsumer is Follow's durable consumer when Config.Consumer is "".
const DefaultConsumer = "siem"

// Config configures a Feed. Zero fields take the defaults shown.
type Config struct {
	Stream producer.StreamConfig // the audit stream (defaults: producer's)
	// Trust judges signatures; nil leaves them unchecked (each line says
	// "unchecked").
	Trust *trust.List
	// Pipeline and Change keep only the events of a pipeline and of a
	// change id ("" keeps all).
	Pipeline, Change string
	// Since starts at the first message stored at or after it (zero: the
	// first message). Follow uses it only when it creates its consumer.
	Since time.Time
	// Consumer is Follow's durable consumer. Default DefaultConsumer.
	Consumer string
	// BatchSize is the most messages read, judged and written at once.
	// Default 1000.
	BatchSize int
	Logger    *slog.Logger // nil discards
}

// Validate fills in the defaults and checks the values.
func (c *Config) Validate() error {
	if err := c.Stream.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if c.Consumer == "" {
		c.Consumer = DefaultConsumer
	}
	if c.BatchSize == 0 {
		c.BatchSize = 1000
	}
	if c.BatchSize < 0 {
		return fmt.Errorf("%w: batch size %d", ErrInvalidConfig, c.BatchSize)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// filter is the subject filter for Pipeline and Change.
func (c *Config) filter() string {
	p, ch := "*", "*"
	if c.Pipeline != "" {
		p = events.EncodeToken(c.Pipeline)
	}
	if c.Change != "" {
		ch = events.EncodeToken(c.Change)
	}
	return c.Stream.SubjectPrefix + "." + p + "." + ch
}

// Stats counts what a feed wrote.
type Stats struct {
	Lines       int    `json:"lines"`
	Undecodable int    `json:"undecodable"`
	Untrusted   int    `json:"untrusted"`  // neither trusted nor unchecked
	OutOfChain  int    `json:"outOfChain"` // a chain problem
	LastSeq     uint64 `json:"lastSeq"`    // the last line's sequence
}

// Feed writes the audit stream as NDJSON CloudEvents (see the package
// documentation). It is not safe for concurrent use.
type Feed struct {
	js     jetstream.JetStream
	cfg    Config
	chains chains
	stream jetstream.Stream // for chain look-ups, opened on first use
	buf    []byte
	stats  Stats
}

// New returns a feed of the stream on js.
func New(js jetstream.JetStream, cfg Config) (*Feed, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Feed{js: js, cfg: cfg}, nil
}

// Stats is what the feed has written so far.
func (f *Feed) Stats() Stats { return f.stats }

// msg is one message read, from a scan or a consumer.
type msg struct {
	seq     uint64
	subject string
	data    []byte
	header  nats.Header
	// redelivered: a consumer delivered it before (its successors on the
	// subject may have been read already).
	redelivered bool
}

// Run writes every message the stream holds when it starts (from
// Config.Since) and returns.
func (f *Feed) Run(ctx context.Context, w io.Writer) error {
	s, err := f.js.Stream(ctx, f.cfg.Stream.Name)
	if err != nil {
		return fmt.Errorf("stream %s: %w", f.cfg.Stream.Name, err)
	}
	f.stream = s
	last := s.CachedInfo().State.LastSeq
	if last == 0 {
		return nil
	}
	f.chains.reset(f.cfg.Since.IsZero())
	bw := bufio.NewWriterSize(w, 256<<10)
	var ms []msg
	err = projector.Scan(ctx, f.js, projector.ScanConfig{Stream: f.cfg.Stream.Name, Subjects: []string{f.cfg.filter()}, Since: f.cfg.Since,
		ToSeq: last, BatchSize: f.cfg.BatchSize, Logger: f.cfg.Logger}, func(batch []projector.StreamMsg) error {
		ms = ms[:0]
		for _, m := range batch {
			ms = append(ms, msg{seq: m.Seq, subject: m.Subject, data: m.Data, header: m.Header})
		}
		return f.write(ctx, bw, ms)
	})
	if err != nil {
		return err
	}
	return bw.Flush()
}

// write judges ms (in parallel), places them in their chains and writes
// their lines (in order) to bw.
func (f *Feed) write(ctx context.Context, bw *bufio.Writer, ms []msg) error {
	js := judgeAll(f.cfg.Trust, ms)
	for i := range ms {
		m, j := &ms[i], &js[i]
		prev, known := f.chains.next(m.subject, j.self)
		if m.redelivered {
			known = false
		}
		chain := ""
		if j.err == nil {
			if !known {
				var err error
				if prev, err = f.before(ctx, m.subject, m.seq); err != nil {
					return fmt.Errorf("what precedes sequence %d on %s: %w", m.seq, m.subject, err)
				}
			}
			chain = chainProblem(j.event, prev)
		}
		f.buf = appendLine(f.buf[:0], f.cfg.Stream.Name, m, j, chain)
		if _, err := bw.Write(f.buf); err != nil {
			return err
		}
		f.count(j, chain, m.seq)
	}
	return nil
}

func (f *Feed) count(j *judged, chain string, seq uint64) {
	f.stats.Lines++
	f.stats.LastSeq = seq
	switch {
	case j.err != nil:
		f.stats.Undecodable++
	case j.trust != verdictTrusted && j.trust != verdictUnchecked:
		f.stats.Untrusted++
	}
	if chain != "" {
		f.stats.OutOfChain++
	}
}

// before asks the stream what precedes seq on subject (producer.Before).
func (f *Feed) before(ctx context.Context, subject string, seq uint64) (events.Prev, error) {
	if f.stream == nil {
		s, err := f.js.Stream(ctx, f.cfg.Stream.Name)
		if err != nil {
			return events.Prev{}, fmt.Errorf("stream %s: %w", f.cfg.Stream.Name, err)
		}
		f.stream = s
	}
	return producer.Before(ctx, f.js, f.stream, f.cfg.Stream.SubjectPrefix, subject, seq)
}

// judgeAll judges ms, a share of them per CPU: verifying signatures is
// most of a feed's work.
func judgeAll(list *trust.List, ms []msg) []judged {
	out := make([]judged, len(ms))
	workers := min(runtime.GOMAXPROCS(0), max(1, len(ms)/64))
	var wg sync.WaitGroup
	per := (len(ms) + workers - 1) / workers
	for lo := 0; lo < len(ms); lo += per {
		hi := min(lo+per, len(ms))
		wg.Go(func() {
			for i := lo; i < hi; i++ {
				out[i] = judge(list, &ms[i])
			}
		})
	}
	wg.Wait()
	return out
}
