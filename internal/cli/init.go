package cli

import (
	"context"
	"errors"
	"fmt"
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
	What   string `json:"what"`   // audit stream, lock bucket, dead letters, writes
	Name   string `json:"name"`   // the stream or bucket
	Status string `json:"status"` // created, exists, would create, updated, would update, differs, refused
	Detail string `json:"detail,omitempty"`
}

// Statuses of an initItem.
const (
	initCreated     = "created"
	initExists      = "exists"
	initWouldCreate = "would create"
	initDiffers     = "differs"
	initRefused     = "refused"
	initUpdated     = "updated"
	initWouldUpdate = "would update"
)

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
Running it again changes nothing; an existing stream or bucket whose
configuration differs is reported (exit 3), never changed — except that a
lock bucket that allows rollups, purges or message deletes (one made by an
older auditflow, or by nats kv add) is made to refuse them, in place, and
init says so: its locks stay, and they are not history.

If the audit stream is missing while the lock bucket or the projector's
streams exist, the stream was most likely deleted: init refuses to create an
empty one (exit 5). Restore it from its backup or mirror instead; --force
creates an empty stream anyway (the history is then lost, and runners apply
every change again).

Exit codes: 0 created or already there, 1 error (unreachable, no
permission), 3 something exists with another configuration, 5 refused.`,
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
// taken for evidence of a deleted stream next time.
func (a *app) initResources(ctx context.Context, js jetstream.JetStream, o initOptions) ([]initItem, error) {
	sc := a.streamConfig()
	var items []initItem
	var differs []string

	diffs, err := producer.CheckStream(ctx, js, sc)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		evidence, err := deletionEvidence(ctx, js, o.bucket)
		if err != nil {
			return items, err
		}
		if len(evidence) > 0 && !o.force {
			items = append(items, initItem{What: "audit stream", Name: sc.Name, Status: initRefused,
				Detail: "missing, but " + strings.Join(evidence, " and ") + ": it was deleted"})
			return items, fmt.Errorf("%w: the audit stream %s is missing while %s, so it existed and was deleted. "+
				"Restore it from its backup or mirror (e.g. nats stream restore) rather than creating an empty one, which would make every runner "+
				"apply every change again; then run init again. --force creates an empty stream anyway",
				errRefused, sc.Name, strings.Join(evidence, " and "))
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
		return items, err
	case len(diffs) > 0:
		items = append(items, initItem{What: "audit stream", Name: sc.Name, Status: initDiffers, Detail: strings.Join(diffs, ", ")})
		differs = append(differs, "stream "+sc.Name)
	default:
		items = append(items, initItem{What: "audit stream", Name: sc.Name, Status: initExists, Detail: streamDetail(sc)})
	}

	it, err := a.initBucket(ctx, js, o, sc.Name)
	if err != nil {
		return items, err
	}
	items = append(items, it)
	if it.Status == initDiffers {
		differs = append(differs, "lock bucket "+o.bucket)
	}

	if o.mirror.Name != "" {
		it, err := initMirror(ctx, js, sc, o)
		if err != nil {
			return items, err
		}
		items = append(items, it)
	}

	for _, s := range append(projector.Streams(projector.Config{Stream: sc}), verify.ResultsStreamConfig(sc.Replicas)) {
		what := "dead letters"
		switch s.Name {
		case projector.WritesStream:
			what = "writes"
		case verify.ResultsStream:
			what = "verify results"
		}
		it := initItem{What: what, Name: s.Name, Detail: fmt.Sprintf("subjects %s, R%d", strings.Join(s.Subjects, " "), s.Replicas)}
		st, err := js.Stream(ctx, s.Name)
		switch {
		case errors.Is(err, jetstream.ErrStreamNotFound) && o.dryRun:
			it.Status = initWouldCreate
		case errors.Is(err, jetstream.ErrStreamNotFound):
			if _, err := js.CreateStream(ctx, s); err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
				return items, fmt.Errorf("create stream %s: %w", s.Name, err)
			}
			it.Status = initCreated
		case err != nil:
			return items, fmt.Errorf("stream %s: %w", s.Name, err)
		default:
			have := st.CachedInfo().Config
			it.Status, it.Detail = initExists, fmt.Sprintf("subjects %s, R%d", strings.Join(have.Subjects, " "), have.Replicas)
			if strings.Join(have.Subjects, " ") != strings.Join(s.Subjects, " ") {
				it.Status, it.Detail = initDiffers, fmt.Sprintf("subjects %v (want %v)", have.Subjects, s.Subjects)
				differs = append(differs, "stream "+s.Name)
			}
		}
		items = append(items, it)
	}
	if len(differs) > 0 {
		return items, fmt.Errorf("%w: %s exist(s) with another configuration than init's; nothing was changed: review and change it by hand (nats stream edit) if it is wrong",
			errProblems, strings.Join(differs, ", "))
	}
	return items, nil
}

// initBucket creates the lock bucket if missing, with its fencing tokens
// above the highest on the audit stream (stream), or reports the existing
// one, making it refuse rollups and purges if it does not: locks are not
// history, and a bucket that allows them lets any client that may write
// one lock key remove every lock.
func (a *app) initBucket(ctx context.Context, js jetstream.JetStream, o initOptions, stream string) (initItem, error) {
	it := initItem{What: "lock bucket", Name: o.bucket}
	kv, err := js.KeyValue(ctx, o.bucket)
	switch {
	case errors.Is(err, jetstream.ErrBucketNotFound):
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
	st, err := kv.Status(ctx)
	if err != nil {
		return it, fmt.Errorf("lock bucket %s: %w", o.bucket, err)
	}
	replicas := 0
	if bs, ok := st.(*jetstream.KeyValueBucketStatus); ok {
		replicas = bs.StreamInfo().Config.Replicas
	}
	it.Status, it.Detail = initExists, fmt.Sprintf("lease (TTL) %s, R%d, refuses rollups and purges", st.TTL(), replicas)
	unsafe, err := lock.SecureBucket(ctx, js, o.bucket, o.dryRun)
	if err != nil {
		return it, err
	}
	if len(unsafe) > 0 {
		it.Status, it.Detail = initUpdated, fmt.Sprintf("lease (TTL) %s, R%d; now refuses rollups, purges and message deletes (it %s), its locks kept",
			st.TTL(), replicas, strings.Join(unsafe, ", "))
		if o.dryRun {
			it.Status, it.Detail = initWouldUpdate, strings.Replace(it.Detail, "now refuses", "would refuse", 1)
		}
	}
	if o.leaseSet && st.TTL() != o.lease {
		it.Status, it.Detail = initDiffers, fmt.Sprintf("lease (TTL) %s (want %s): runners must use --lock-lease %s", st.TTL(), o.lease, st.TTL())
		if len(unsafe) > 0 && !o.dryRun {
			it.Detail += "; it now refuses rollups, purges and message deletes"
		}
	}
	return it, nil
}

// initMirror creates the mirror if missing, or reports the existing one.
func initMirror(ctx context.Context, js jetstream.JetStream, sc producer.StreamConfig, o initOptions) (initItem, error) {
	it := initItem{What: "mirror", Name: o.mirror.Name, Detail: "of " + sc.Name + ", file storage, no limits, delete and purge denied"}
	if _, err := producer.MirrorConfig(sc, o.mirror); err != nil {
		return it, usageError{err}
	}
	_, err := js.Stream(ctx, o.mirror.Name)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound) && o.dryRun:
		it.Status = initWouldCreate
		return it, nil
	case errors.Is(err, jetstream.ErrStreamNotFound):
		it.Status = initCreated
	case err != nil:
		return it, fmt.Errorf("stream %s: %w", o.mirror.Name, err)
	default:
		it.Status = initExists
	}
	s, err := producer.EnsureMirror(ctx, js, sc, o.mirror)
	if errors.Is(err, producer.ErrStreamMismatch) {
		it.Status, it.Detail = initDiffers, err.Error()
		return it, fmt.Errorf("%w: %w", errProblems, err)
	}
	if err != nil {
		return it, err
	}
	if info, err := s.Info(ctx); err == nil && info.Mirror != nil {
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
