package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/auditflow/auditflow/internal/natsperm"
	"github.com/auditflow/auditflow/internal/tokenfloor"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/verify"
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
	// HighestRecorded is the highest sequence of the stream that a
	// surviving record names (a projector's AuditWrite, a verify result);
	// Missing is how many sequences above LastSeq it proves were lost
	// with the stream (the mirror had not copied them yet).
	HighestRecorded uint64 `json:"highestRecorded"`
	RecordedBy      string `json:"recordedBy,omitempty"`
	Missing         uint64 `json:"missing"`
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
another name: auditflow init --mirror AUDIT_MIRROR2. Events stored after
the mirror's last message are lost with the stream. A mirror made by
auditflow init copies through a durable consumer and is milliseconds
behind, also across a leader change (measured: within 20 ms of the new
leader's first write); one made before copies nothing for 10 s to minutes
after the stream's leader is lost (auditflow init reports it; auditflow
stats shows every mirror's distance). Restore cannot know what the stream
held, but it reads what survives it: if a projector's write
(AUDIT_WRITES) or a verify result (AUDIT_VERIFY) names a sequence above
the mirror's last, it says how many sequences are missing and exits 3.

It updates the audit stream's configuration, which the deployment's roles
are denied (deploy/nats/accounts.conf): like the deletion it repairs, it is
a break-glass act. Then restart the projectors: their durable consumers
went with the stream, and they rebuild them.

Example:
  auditflow restore --from AUDIT_MIRROR

It then reads the restored stream for its highest fencing token and checks
that the lock bucket hands out tokens above it (a target that fences refuses
lower ones); if the bucket is missing, auditflow init creates it above.

Exit codes: 0 restored, 1 error, 3 restored, but sequences are missing
(a surviving record names a higher one) or the lock bucket's next fencing
token is not above the stream's highest (the output says what to do),
5 refused (the stream exists, or the mirror cannot restore it).`,
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
			rep.HighestLockToken, rep.LockTokens, behind, err = a.lockTokensAfterRestore(ctx, js, r.LastSeq)
			if err != nil {
				return err
			}
			rep.HighestRecorded, rep.RecordedBy = highestRecordedSeq(ctx, js, a.log)
			if rep.HighestRecorded > rep.LastSeq {
				rep.Missing = rep.HighestRecorded - rep.LastSeq
			}
			if eerr := a.emit(rep, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "STREAM\tFROM\tMESSAGES\tSEQUENCES\tTOOK")
				fmt.Fprintf(w, "%s\t%s\t%d\t%d..%d\t%s\n", rep.Stream, rep.From, rep.Messages, rep.FirstSeq, rep.LastSeq, r.Took.Round(time.Millisecond))
				if rep.Missing > 0 {
					fmt.Fprintf(w, "\nMISSING: %s\n", missingSay(rep))
				}
				fmt.Fprintf(w, "\nfencing tokens: %s\n", rep.LockTokens)
				fmt.Fprintf(w, "next: %s\n", rep.Next)
			}); eerr != nil {
				return eerr
			}
			switch {
			case rep.Missing > 0 && behind:
				return fmt.Errorf("%w: the stream is restored, but %s; and %s", errProblems, missingSay(rep), rep.LockTokens)
			case rep.Missing > 0:
				return fmt.Errorf("%w: the stream is restored, but %s", errProblems, missingSay(rep))
			case behind:
				return fmt.Errorf("%w: the stream is restored, but %s", errProblems, rep.LockTokens)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&from, "from", "", "the mirror to restore from (required)")
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "give up after this long (0: never); run restore again to finish")
	return cmd
}

// missingSay says what a restore's report proves was lost.
func missingSay(rep restoreReport) string {
	return fmt.Sprintf("%d sequences (%d..%d) were stored on %s but never reached the mirror %s: %s recorded sequence %d. "+
		"They are lost with the stream; the restored history ends at %d, and a bundle exported from it verifies without them. "+
		"The projectors' stores may still hold them, and new events will take those sequences again: a store keys its rows by sequence, "+
		"so it would keep the lost events' rows there and not store the new ones. Before runners or projectors start: keep a copy of each store "+
		"(the only record of the lost events), then rebuild it from the restored stream (auditflow replay --reset)",
		rep.Missing, rep.LastSeq+1, rep.HighestRecorded, rep.Stream, rep.From, rep.RecordedBy, rep.HighestRecorded, rep.LastSeq)
}

// highestRecordedSeq is the highest audit stream sequence that the
// streams which survive the audit stream's loss record: the projectors'
// AuditWrites (AUDIT_WRITES, a week of them: the sequences each write
// stored) and verify's results (AUDIT_VERIFY: the last sequence each
// verify read). It reads each subject's last message; what it cannot read
// it logs and skips (the restore itself is done).
func highestRecordedSeq(ctx context.Context, js jetstream.JetStream, log *slog.Logger) (uint64, string) {
	var highest uint64
	var by string
	for _, src := range []struct {
		stream string
		seq    func([]byte) (uint64, string)
	}{
		{projector.WritesStream, func(b []byte) (uint64, string) {
			var w projector.AuditWrite
			if json.Unmarshal(b, &w) != nil {
				return 0, ""
			}
			return max(w.LastSeq, w.Through), "the " + w.Store + " projector's write (consumer " + w.Consumer + ") at " + w.At.UTC().Format(time.RFC3339)
		}},
		{verify.ResultsStream, func(b []byte) (uint64, string) {
			var r verify.Result
			if json.Unmarshal(b, &r) != nil {
				return 0, ""
			}
			return r.LastSeq, "verify of the " + r.Store + " store at " + r.At.UTC().Format(time.RFC3339)
		}},
	} {
		s, err := js.Stream(ctx, src.stream)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			continue
		}
		if err == nil {
			var info *jetstream.StreamInfo
			if info, err = s.Info(ctx, jetstream.WithSubjectFilter(">")); err == nil {
				for subj := range info.State.Subjects {
					m, err := s.GetLastMsgForSubject(ctx, subj)
					if err != nil {
						log.Warn("restore: cannot read a record of the stream's sequences", "stream", src.stream, "subject", subj, "err", err)
						continue
					}
					if seq, who := src.seq(m.Data); seq > highest {
						highest, by = seq, who
					}
				}
			}
		}
		if err != nil {
			log.Warn("restore: cannot read the records of the stream's sequences", "stream", src.stream, "err", err)
		}
	}
	return highest, by
}

// lockTokensAfterRestore checks that the lock bucket hands out fencing
// tokens above the highest on the restored stream: a target that fences
// its writes refuses any token below one it has seen. A bucket that
// outlived the stream is above it; one created while the stream was
// missing, without it to read, may not be (behind).
func (a *app) lockTokensAfterRestore(ctx context.Context, js jetstream.JetStream, last uint64) (highest uint64, say string, behind bool, err error) {
	highest, err = tokenfloor.HighestThrough(ctx, js, a.streamConfig().Name, last, a.log)
	if err != nil {
		return 0, "", false, err
	}
	// Right after a restore a cluster may still be settling (a node that
	// just came back catching up): ask again rather than fail.
	s, err := producer.ReadStream(ctx, js, "KV_"+a.lockBucket, producer.Retry{For: time.Minute, Logger: a.log})
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
