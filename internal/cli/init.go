package cli

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/auditflow/auditflow/internal/natsperm"
	"github.com/auditflow/auditflow/internal/tokenfloor"
	"github.com/auditflow/auditflow/lock"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/verify"
)

// initItem is one line of init's report.
type initItem struct {
	What        string       `json:"what"`   // audit stream, lock bucket, mirror, dead letters, writes, verify results, projector consumer, …
	Name        string       `json:"name"`   // the stream, bucket or consumer
	Status      string       `json:"status"` // created, exists, would create, differs, refused
	Detail      string       `json:"detail,omitempty"`
	Differences []difference `json:"differences,omitempty"` // with status differs: each setting that is not auditflow's
}

// Statuses of an initItem.
const (
	initCreated     = "created"
	initExists      = "exists"
	initWouldCreate = "would create"
	initDiffers     = "differs"
	initRefused     = "refused"
)

// differs makes it an item that differs by ds.
func (it *initItem) differs(ds []difference) {
	it.Status, it.Detail, it.Differences = initDiffers, joinDifferences(ds), ds
}

// breakGlass is what init says of the differences it found.
const breakGlass = "nothing was changed: the engine's streams, lock bucket and projector consumers change only by break-glass " +
	"(deploy/nats/accounts.conf denies every role, the admin included, to edit them): allow the edit for one user, reload the servers, " +
	"change it (nats stream edit …), revert and reload, then run init again (README, Security: Break-glass)"

func (a *app) initCommand() *cobra.Command {
	var lease, wait time.Duration
	var force, dryRun bool
	var mirror producer.Mirror
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create the audit stream, the lock bucket and the projector's streams if missing (admin; idempotent)",
		Long: `init creates what auditflow needs on NATS JetStream and is missing, with the
safe configuration, and reports what already exists:

  the audit stream (AUDIT)        file storage, no limits, delete and purge
                                  denied, --stream-replicas replicas
  the lock bucket (auditflow_locks)  --lock-lease as its TTL; rollups, purges
                                  and message deletes refused; fencing
                                  tokens above the highest on the stream
  AUDIT_DEADLETTER, AUDIT_WRITES  the projector's dead letters and telemetry
  --mirror NAME                   a continuous mirror of the audit stream, its
                                  backup of record (auditflow restore --from)

Runners and projectors never create these: one that finds the audit stream
missing stops with an error, because an empty stream in place of a deleted
one would make every runner apply every change again. Run init once for a
new deployment, as a user with the admin role (see the README, Security).
Running it again changes nothing. It compares every stream and the bucket
that exist, and the projectors' durable consumers on the audit stream
(projector-*), with the configuration auditflow gives them, on what decides
that nothing is dropped or skipped (limits, retention, discard, subjects,
storage, replicas, deletes, purges, rollups, sealing, mirrors and sources;
a consumer's filter, acks, deliveries and start), and reports each
difference — field, expected, actual — with exit 3. It never changes
anything that exists, a lock bucket that allows rollups or purges (one made
by an older auditflow, or by nats kv add) included: the deployment lets no
role edit them, and fixing one is break-glass (README, Security).

If the audit stream is missing while the lock bucket or the projector's
streams exist, the stream was most likely deleted: init refuses to create an
empty one (exit 5). Restore it from its backup or mirror instead; --force
creates an empty stream anyway (the history is then lost, and runners apply
every change again).

Exit codes: 0 created or already there, 1 error (unreachable, no
permission), 3 something exists with another configuration (each
difference is listed), 5 refused.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if lease < 0 {
				return usage("--lock-lease %s: must be positive", lease)
			}
			js, err := a.connect()
			if err != nil {
				return err
			}
			// A missing right ends a request at once, naming the subject.
			ctx, stop := natsperm.Watch(cmd.Context(), a.nc, natsperm.JetStream)
			defer stop()
			opts := initOptions{replicas: a.replicas, bucket: a.lockBucket, lease: lease, leaseSet: cmd.Flags().Changed("lock-lease"),
				force: force, dryRun: dryRun, mirror: mirror}
			// A cluster that is still electing its leaders answers "not now"
			// or not at all: init is idempotent, so try it again for --wait.
			var items []initItem
			for deadline := time.Now().Add(wait); ; {
				items, err = a.initResources(ctx, js, opts)
				if err == nil || !producer.Transient(err) || natsperm.Cause(ctx) != nil || time.Now().After(deadline) {
					break
				}
				a.log.Warn("init: the server is not ready, retrying", "err", err)
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			}
			if pe := natsperm.Cause(ctx); err != nil && pe != nil {
				err = fmt.Errorf("init: %w", pe)
			}
			if eerr := a.emit(items, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "WHAT\tNAME\tSTATUS\tDETAIL")
				for _, it := range items {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", it.What, it.Name, it.Status, it.Detail)
				}
			}); eerr != nil && err == nil {
				err = eerr
			}
			return err
		},
	}
	cmd.Flags().DurationVar(&lease, "lock-lease", lock.DefaultLease, "the lock bucket's TTL (the runners' --lock-lease) when creating it; checked against an existing bucket only when given")
	cmd.Flags().BoolVar(&force, "force", false, "create an empty audit stream even though the other resources show it existed and was deleted")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "report what is missing and change nothing")
	cmd.Flags().StringVar(&mirror.Name, "mirror", "", "also create this stream as a continuous mirror of the audit stream (e.g. AUDIT_MIRROR): the backup that auditflow restore recreates a deleted stream from")
	cmd.Flags().StringVar(&mirror.Domain, "mirror-source-domain", "", "the audit stream's JetStream domain, when the mirror is made on a server of another domain (a leaf node or another cluster)")
	cmd.Flags().IntVar(&mirror.Replicas, "mirror-replicas", 0, "the mirror's replicas (default: --stream-replicas)")
	cmd.Flags().DurationVar(&wait, "wait", 0, "how long to keep trying while the server or cluster is not ready (no answer, no JetStream leader yet)")
	return cmd
}

type initOptions struct {
	replicas      int
	bucket        string
	lease         time.Duration
	leaseSet      bool // --lock-lease given: check an existing bucket's TTL against it
	force, dryRun bool
	mirror        producer.Mirror // Name "": none
}

// initResources creates what is missing, in order: the audit stream first,
// so that a failure leaves no lock bucket or projector stream behind to be
// taken for evidence of a deleted stream next time. What exists is
// compared with what init would create, and left as it is.
func (a *app) initResources(ctx context.Context, js jetstream.JetStream, o initOptions) ([]initItem, error) {
	sc := a.streamConfig()
	want, err := sc.JetStreamConfig()
	if err != nil {
		return nil, err
	}
	var items []initItem

	st, err := js.Stream(ctx, sc.Name)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		evidence, err := deletionEvidence(ctx, js, o.bucket)
		if err != nil {
			return items, err
		}
		if len(evidence) > 0 && !o.force {
			items = append(items, initItem{What: "audit stream", Name: sc.Name, Status: initRefused,
				Detail: "missing, but " + strings.Join(evidence, " and ") + ": it was deleted"})
			how := "Restore it from its backup or mirror (auditflow restore --from MIRROR, or nats stream restore from a backup)"
			if ms := mirrorsOf(ctx, js, sc.Name, o.mirror.Name); len(ms) > 0 {
				how = "Restore it from its mirror: auditflow restore --from " + ms[0]
				if len(ms) > 1 {
					how += " (mirrors found: " + strings.Join(ms, ", ") + ")"
				}
			}
			return items, fmt.Errorf("%w: the audit stream %s is missing while %s, so it existed and was deleted. "+
				"%s, rather than creating an empty one, which would make every runner "+
				"apply every change again; then run init again. --force creates an empty stream anyway",
				errRefused, sc.Name, strings.Join(evidence, " and "), how)
		}
		it := initItem{What: "audit stream", Name: sc.Name, Status: initWouldCreate, Detail: streamDetail(sc)}
		if !o.dryRun {
			if _, err := producer.EnsureStream(ctx, js, sc); err != nil {
				return items, err
			}
			it.Status = initCreated
		}
		if len(evidence) > 0 {
			it.Detail += "; EMPTY although " + strings.Join(evidence, " and ") + " (--force)"
		}
		items = append(items, it)
	case err != nil:
		return items, fmt.Errorf("stream %s: %w", sc.Name, err)
	default:
		it := initItem{What: "audit stream", Name: sc.Name, Status: initExists, Detail: streamDetail(sc)}
		if ds := streamDifferences(st.CachedInfo().Config, want); len(ds) > 0 {
			it.differs(ds)
		}
		items = append(items, it)
	}

	it, err := a.initBucket(ctx, js, o, sc.Name)
	if err != nil {
		return items, err
	}
	items = append(items, it)

	if o.mirror.Name != "" {
		it, err := initMirror(ctx, js, sc, o)
		if err != nil {
			return items, err
		}
		items = append(items, it)
	}

	for _, s := range append(projector.Streams(projector.Config{Stream: sc}), verify.ResultsStreamConfig(sc.Replicas)) {
		it, err := initStream(ctx, js, s, o.dryRun)
		if err != nil {
			return items, err
		}
		items = append(items, it)
	}

	cons, err := checkProjectorConsumers(ctx, js, sc)
	if err != nil {
		return items, err
	}
	items = append(items, cons...)

	var differs []string
	for _, it := range items {
		if it.Status == initDiffers {
			differs = append(differs, it.What+" "+it.Name)
		}
	}
	if len(differs) > 0 {
		// errProblems is not printed: the table (or JSON) names each
		// difference, this says what to do about them.
		fmt.Fprintf(a.errOut, "auditflow: init: %s differ(s) from auditflow's configuration (each difference is listed); %s\n",
			strings.Join(differs, ", "), breakGlass)
		return items, fmt.Errorf("%w: %s differ(s) from auditflow's configuration", errProblems, strings.Join(differs, ", "))
	}
	return items, nil
}

// streamWhat names one of the streams init makes beside the audit stream.
func streamWhat(s jetstream.StreamConfig) string {
	switch s.Name {
	case projector.DeadLetterStream:
		return "dead letters"
	case projector.WritesStream:
		return "writes"
	case verify.ResultsStream:
		return "verify results"
	}
	if s.Description != "" {
		return strings.TrimPrefix(s.Description, "auditflow ")
	}
	return "stream"
}

// initStream creates one of the projector's streams or the verify
// results' if missing, or compares the existing one with s.
func initStream(ctx context.Context, js jetstream.JetStream, s jetstream.StreamConfig, dryRun bool) (initItem, error) {
	it := initItem{What: streamWhat(s), Name: s.Name, Detail: fmt.Sprintf("subjects %s, R%d", strings.Join(s.Subjects, " "), max(s.Replicas, 1))}
	st, err := js.Stream(ctx, s.Name)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound) && dryRun:
		it.Status = initWouldCreate
	case errors.Is(err, jetstream.ErrStreamNotFound):
		if _, err := js.CreateStream(ctx, s); err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return it, fmt.Errorf("create stream %s: %w", s.Name, err)
		}
		it.Status = initCreated
	case err != nil:
		return it, fmt.Errorf("stream %s: %w", s.Name, err)
	default:
		it.Status = initExists
		if ds := streamDifferences(st.CachedInfo().Config, s); len(ds) > 0 {
			it.differs(ds)
		}
	}
	return it, nil
}

// checkProjectorConsumers compares the projectors' durable consumers on
// the audit stream (named projector-*, as the projector names them by
// default) with what a projector creates, and reports any push consumer
// but a mirror's.
func checkProjectorConsumers(ctx context.Context, js jetstream.JetStream, sc producer.StreamConfig) ([]initItem, error) {
	st, err := js.Stream(ctx, sc.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil // a dry run over a missing stream
	}
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", sc.Name, err)
	}
	filter := sc.SubjectPrefix + ".>"
	var items []initItem
	l := st.ListConsumers(ctx)
	for info := range l.Info() {
		// A push consumer delivers the history to a subject named in its
		// request body, which no subject permission checks: whoever may
		// subscribe there reads it. Only a mirror's (producer.MirrorDeliverSubject)
		// is auditflow's.
		if d := info.Config.DeliverSubject; d != "" && d != producer.MirrorDeliverSubject(info.Name) {
			it := initItem{What: "push consumer", Name: sc.Name + " > " + info.Name, Status: initExists}
			it.differs([]difference{{Field: "deliver subject", Expected: "none: only a mirror's consumer pushes, to " + producer.MirrorDeliverSubject(info.Name),
				Actual: d + " (every event it reads goes there; remove it: nats consumer rm " + sc.Name + " " + info.Name + ")"}})
			items = append(items, it)
			continue
		}
		if !strings.HasPrefix(info.Name, "projector-") {
			continue
		}
		it := initItem{What: "projector consumer", Name: sc.Name + " > " + info.Name, Status: initExists,
			Detail: "filter " + filter + ", explicit acks, unlimited deliveries"}
		if ds := consumerDifferences(info.Config, sc.SubjectPrefix); len(ds) > 0 {
			it.differs(ds)
		}
		items = append(items, it)
	}
	if err := l.Err(); err != nil {
		return items, fmt.Errorf("consumers of %s: %w", sc.Name, err)
	}
	slices.SortFunc(items, func(a, b initItem) int { return strings.Compare(a.Name, b.Name) })
	return items, nil
}

// initBucket creates the lock bucket if missing, with its fencing tokens
// above the highest on the audit stream (stream), or compares the
// existing one with what it would create: one that allows rollups or
// purges lets any client that may write one lock key remove every lock,
// and is reported, not changed (break-glass).
func (a *app) initBucket(ctx context.Context, js jetstream.JetStream, o initOptions, stream string) (initItem, error) {
	it := initItem{What: "lock bucket", Name: o.bucket}
	want := lock.BucketStreamConfig(o.bucket, o.replicas, o.lease)
	st, err := js.Stream(ctx, want.Name)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		floor, err := tokenfloor.Highest(ctx, js, stream, a.log)
		if err != nil {
			return it, err
		}
		detail := func(floor uint64) string {
			tokens := "fencing tokens start at 1 (no lock token on the stream)"
			if floor > 0 {
				tokens = fmt.Sprintf("fencing tokens start at %d, above the highest on the stream (%d)", floor+1, floor)
			}
			return fmt.Sprintf("lease (TTL) %s, R%d, refuses rollups and purges; %s", o.lease, o.replicas, tokens)
		}
		it.Status, it.Detail = initWouldCreate, detail(floor)
		if o.dryRun {
			if floor > 0 {
				it.Detail += fmt.Sprintf("; created a lease (%s) after init starts: the bucket existed, and its holders may act until then", o.lease)
			}
			return it, nil
		}
		if floor > 0 {
			fmt.Fprintf(a.errOut, "auditflow: the lock bucket %s existed (the stream has fencing tokens up to %d) and was deleted: waiting the lease (%s) "+
				"before creating it again, so that no lock is taken while a holder of the deleted bucket may still act\n", o.bucket, floor, o.lease)
		}
		asked := 0
		if _, err := lock.New(ctx, js, lock.Config{Bucket: o.bucket, Replicas: o.replicas, Lease: o.lease, CreateBucket: true, Logger: a.log,
			TokenFloor: func(ctx context.Context) (uint64, error) {
				asked++
				if asked == 1 {
					return floor, nil // just read
				}
				var err error
				floor, err = tokenfloor.Highest(ctx, js, stream, a.log) // after the wait: what the old holders recorded meanwhile
				return floor, err
			}}); err != nil {
			return it, err
		}
		it.Status, it.Detail = initCreated, detail(floor)
		return it, nil
	case err != nil:
		return it, fmt.Errorf("lock bucket %s: %w", o.bucket, err)
	}
	have := st.CachedInfo().Config
	if !o.leaseSet {
		// The lease is checked only when given: the runners' --lock-lease
		// must match the bucket's, whichever it is.
		want = lock.BucketStreamConfig(o.bucket, o.replicas, have.MaxAge)
	}
	it.Status, it.Detail = initExists, fmt.Sprintf("lease (TTL) %s, R%d, refuses rollups and purges", have.MaxAge, max(have.Replicas, 1))
	if ds := streamDifferences(have, want); len(ds) > 0 {
		for i, d := range ds {
			if d.Field == "max age" {
				ds[i].Field = "lease (max age)"
				ds[i].Actual += fmt.Sprintf(" (runners must use --lock-lease %s)", have.MaxAge)
			}
		}
		it.differs(ds)
	}
	return it, nil
}

// initMirror creates the mirror if missing, or compares the existing one
// with it.
func initMirror(ctx context.Context, js jetstream.JetStream, sc producer.StreamConfig, o initOptions) (initItem, error) {
	it := initItem{What: "mirror", Name: o.mirror.Name, Detail: "of " + sc.Name + ", file storage, no limits, delete and purge denied"}
	want, err := producer.MirrorConfig(sc, o.mirror)
	if err != nil {
		return it, usageError{err}
	}
	st, err := js.Stream(ctx, o.mirror.Name)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound) && o.dryRun:
		it.Status = initWouldCreate
		return it, nil
	case errors.Is(err, jetstream.ErrStreamNotFound):
		if st, err = producer.EnsureMirror(ctx, js, sc, o.mirror); err != nil {
			return it, err
		}
		it.Status = initCreated
	case err != nil:
		return it, fmt.Errorf("stream %s: %w", o.mirror.Name, err)
	default:
		it.Status = initExists
		if ds := streamDifferences(st.CachedInfo().Config, want); len(ds) > 0 {
			for i, d := range ds {
				if d.Field == "mirror" && d.Actual == "none" {
					ds[i].Actual += " (a stream promoted by a restore stays a frozen copy: name the new mirror otherwise)"
				}
			}
			it.differs(ds)
			return it, nil
		}
	}
	if info, err := st.Info(ctx); err == nil && info.Mirror != nil {
		it.Detail += fmt.Sprintf("; %d messages, %d behind", info.State.Msgs, info.Mirror.Lag)
	}
	return it, nil
}

// deletionEvidence names the other resources that exist although the
// audit stream does not: they are made after it, so the stream was there.
func deletionEvidence(ctx context.Context, js jetstream.JetStream, bucket string) ([]string, error) {
	var out []string
	kv, err := js.KeyValue(ctx, bucket)
	switch {
	case errors.Is(err, jetstream.ErrBucketNotFound):
	case err != nil:
		return nil, fmt.Errorf("lock bucket %s: %w", bucket, err)
	default:
		if st, err := kv.Status(ctx); err == nil {
			if bs, ok := st.(*jetstream.KeyValueBucketStatus); ok && bs.StreamInfo().State.LastSeq > 0 {
				out = append(out, fmt.Sprintf("the lock bucket %s has handed out lock revisions up to %d", bucket, bs.StreamInfo().State.LastSeq))
			}
		}
	}
	for _, name := range []string{projector.DeadLetterStream, projector.WritesStream} {
		_, err := js.Stream(ctx, name)
		switch {
		case errors.Is(err, jetstream.ErrStreamNotFound):
		case err != nil:
			return nil, fmt.Errorf("stream %s: %w", name, err)
		default:
			out = append(out, "the stream "+name+" exists")
		}
	}
	return out, nil
}

func streamDetail(sc producer.StreamConfig) string {
	return fmt.Sprintf("subjects %s.>, R%d, file storage, no limits, delete and purge denied", sc.SubjectPrefix, sc.Replicas)
}

// mirrorsOf names the streams that mirror stream, named (init's --mirror)
// first if it is one: what auditflow restore --from recreates a deleted
// audit stream from. Streams that cannot be listed are left out.
func mirrorsOf(ctx context.Context, js jetstream.JetStream, stream, named string) []string {
	var out []string
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	l := js.ListStreams(lctx)
	for info := range l.Info() {
		if m := info.Config.Mirror; m != nil && m.Name == stream {
			out = append(out, info.Config.Name)
		}
	}
	slices.SortFunc(out, func(a, b string) int {
		switch {
		case a == named:
			return -1
		case b == named:
			return 1
		}
		return strings.Compare(a, b)
	})
	return out
}
