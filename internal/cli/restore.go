package cli

import (
	"context"
	"errors"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/auditflow/auditflow/internal/natsperm"
	"github.com/auditflow/auditflow/internal/tokenfloor"
	"github.com/auditflow/auditflow/producer"
)

// restoreReport is restore's output.
type restoreReport struct {
	Stream   string `json:"stream"`
	From     string `json:"from"`
	Messages uint64 `json:"messages"`
	FirstSeq uint64 `json:"firstSeq"`
	LastSeq  uint64 `json:"lastSeq"`
	TookMs   int64  `json:"tookMs"`
	Resumed  bool   `json:"resumed"`
	Next     string `json:"next"`
	// HighestLockToken is the highest fencing token on the restored
	// stream; LockTokens says whether the lock bucket's next token is
	// above it (what to do if not).
	HighestLockToken uint64 `json:"highestLockToken"`
	LockTokens       string `json:"lockTokens"`
}

func (a *app) restoreCommand() *cobra.Command {
	var from string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "restore --from MIRROR",
		Short: "Recreate a deleted audit stream from its mirror, every event at its sequence (admin, break-glass)",
		Long: `restore recreates the audit stream after it was deleted, from the mirror that
auditflow init --mirror made: every event comes back at its original sequence
with its subject, headers and bytes, so signatures still verify, the stores
built from the stream still match it, and runners skip what was applied.

While it copies, the stream has no subjects: no runner can publish and none
starts (they report the stream is being restored). It refuses if the audit
stream exists, if MIRROR is not a mirror of it, or if MIRROR has gaps.
An interrupted restore is finished by running it again.

JetStream does not let a stream source its own mirror, so the mirror is
promoted first: it becomes a frozen copy of the history up to the deletion,
which is kept (nothing is deleted). Make a new mirror afterwards, under
another name: auditflow init --mirror AUDIT_MIRROR2. Events published
after the mirror's last message (it lags by milliseconds) are lost with
the stream; restore reports the last sequence it brought back.

It updates the audit stream's configuration, which the deployment's roles
are denied (deploy/nats/accounts.conf): like the deletion it repairs, it is
a break-glass act. Then restart the projectors: their durable consumers
went with the stream, and they rebuild them.

Example:
  auditflow restore --from AUDIT_MIRROR

It then reads the restored stream for its highest fencing token and checks
that the lock bucket hands out tokens above it (a target that fences refuses
lower ones); if the bucket is missing, auditflow init creates it above.

Exit codes: 0 restored, 1 error, 3 restored, but the lock bucket's next
fencing token is not above the stream's highest (the output says what to
do), 5 refused (the stream exists, or the mirror cannot restore it).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if from == "" {
				return usage("--from: name the mirror to restore from (auditflow init --mirror made it)")
			}
			js, err := a.connect()
			if err != nil {
				return err
			}
			ctx, stop := natsperm.Watch(cmd.Context(), a.nc, natsperm.JetStream)
			defer stop()
			if timeout > 0 {
				var cancel func()
				ctx, cancel = context.WithTimeout(ctx, timeout)
				defer cancel()
			}
			bar := a.newProgress("restore", 0)
			r, err := producer.Restore(ctx, js, a.streamConfig(), from, func(have, want uint64) {
				bar.set(int64(have), int64(want), 0, 0)
			})
			bar.finish()
			if pe := natsperm.Cause(ctx); err != nil && pe != nil {
				return fmt.Errorf("restore: %w (restore updates the audit stream: a break-glass right, see the README)", pe)
			}
			if errors.Is(err, producer.ErrRestore) {
				return fmt.Errorf("%w: %w", errRefused, err)
			}
			if err != nil {
				return err
			}
			rep := restoreReport{Stream: a.streamConfig().Name, From: r.From, Messages: r.Messages, FirstSeq: r.FirstSeq, LastSeq: r.LastSeq,
				TookMs: r.Took.Milliseconds(), Resumed: r.Resumed,
				Next: fmt.Sprintf("%s is now a frozen copy: make a new mirror (auditflow init --mirror %s_2), then restart the projectors", from, from)}
			behind := false
			rep.HighestLockToken, rep.LockTokens, behind, err = a.lockTokensAfterRestore(ctx, js)
			if err != nil {
				return err
			}
			if eerr := a.emit(rep, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "STREAM\tFROM\tMESSAGES\tSEQUENCES\tTOOK")
				fmt.Fprintf(w, "%s\t%s\t%d\t%d..%d\t%s\n", rep.Stream, rep.From, rep.Messages, rep.FirstSeq, rep.LastSeq, r.Took.Round(time.Millisecond))
				fmt.Fprintf(w, "\nfencing tokens: %s\n", rep.LockTokens)
				fmt.Fprintf(w, "next: %s\n", rep.Next)
			}); eerr != nil {
				return eerr
			}
			if behind {
				return fmt.Errorf("%w: the stream is restored, but %s", errProblems, rep.LockTokens)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&from, "from", "", "the mirror to restore from (required)")
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "give up after this long (0: never); run restore again to finish")
	return cmd
}

// lockTokensAfterRestore checks that the lock bucket hands out fencing
// tokens above the highest on the restored stream: a target that fences
// its writes refuses any token below one it has seen. A bucket that
// outlived the stream is above it; one created while the stream was
// missing, without it to read, may not be (behind).
func (a *app) lockTokensAfterRestore(ctx context.Context, js jetstream.JetStream) (highest uint64, say string, behind bool, err error) {
	highest, err = tokenfloor.Highest(ctx, js, a.streamConfig().Name, a.log)
	if err != nil {
		return 0, "", false, err
	}
	s, err := js.Stream(ctx, "KV_"+a.lockBucket)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		return highest, fmt.Sprintf("the lock bucket %s is missing: run auditflow init, which creates it with fencing tokens above the highest on the stream (%d)",
			a.lockBucket, highest), false, nil
	case err != nil:
		return 0, "", false, fmt.Errorf("lock bucket %s: %w", a.lockBucket, err)
	}
	next := s.CachedInfo().State.LastSeq + 1
	if next <= highest {
		return highest, fmt.Sprintf("the lock bucket %s would hand out fencing token %d, not above the highest on the stream (%d): a target that fences would refuse "+
			"the runners' writes. Stop the runners, delete the lock bucket (break-glass, like this restore) and run auditflow init, which creates it above %d",
			a.lockBucket, next, highest, highest), true, nil
	}
	return highest, fmt.Sprintf("the lock bucket %s hands out tokens from %d, above the highest on the stream (%d)", a.lockBucket, next, highest), false, nil
}
