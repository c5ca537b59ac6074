package cli

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/inspect"
	"github.com/auditflow/auditflow/internal/render"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/trust"
)

// deadLetters reads the dead letters with sequence above after, at most
// limit of them (0: all), oldest first.
func (a *app) deadLetters(ctx context.Context, after uint64, limit int) ([]inspect.DeadLetter, uint64, error) {
	js, err := a.connect()
	if err != nil {
		return nil, 0, err
	}
	out, n, err := inspect.ReadDeadLetters(ctx, js, after, limit, a.log)
	if errors.Is(err, inspect.ErrNoDeadLetterStream) {
		return nil, 0, fmt.Errorf("%w: stream %s does not exist (auditflow init creates it)", errNotFound, projector.DeadLetterStream)
	}
	return out, n, err
}

func (a *app) deadletterCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "deadletter",
		Short: "Messages no store could hold (stream AUDIT_DEADLETTER): list, show, and replay them",
		Long: `Projectors copy to AUDIT_DEADLETTER every message they cannot store —
undecodable, on another change's subject, or refused by the store — with the
reason and the original's stream, subject and sequence (the original stays
in AUDIT: delete and purge are denied). A dead letter blocks nothing; the
change whose subject it is on waits for an operator (issue get --guidance,
then issue fix).`,
		Example: "  auditflow deadletter list\n  auditflow deadletter show 3 --json",
	}
	var after uint64
	var limit int
	list := &cobra.Command{
		Use:     "list",
		Short:   "Dead letters, oldest first, with their reason and original",
		Example: "  auditflow deadletter list --after 100 --limit 20 --json",
		Args:    cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if limit < 0 {
				return usage("--limit: want 0 (all) or more, got %d", limit)
			}
			out, _, err := a.deadLetters(c.Context(), after, limit)
			if err != nil {
				return err
			}
			return a.emit(out, func(w *tabwriter.Writer) {
				if len(out) == 0 {
					fmt.Fprintln(w, "no dead letters")
					return
				}
				fmt.Fprintln(w, "SEQ\tTIME (UTC)\tORIGINAL\tCOPY\tCONSUMER\tREASON")
				for _, d := range out {
					fmt.Fprintf(w, "%d\t%s\t%s seq %d\t%s\t%s\t%s\n", d.Seq, d.Time.Format(time.DateTime), d.OriginalStream, d.OriginalSequence,
						d.Copy, render.Dash(d.Consumer), render.Clip(d.Reason, 80))
				}
			})
		},
	}
	list.Flags().Uint64Var(&after, "after", 0, "only dead letters after this sequence of AUDIT_DEADLETTER")
	list.Flags().IntVar(&limit, "limit", 100, "at most this many (0: all)")
	show := &cobra.Command{
		Use:     "show SEQ",
		Short:   "One dead letter: its reason, its original, and its body",
		Example: "  auditflow deadletter show 3",
		Args:    cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			seq, err := strconv.ParseUint(args[0], 10, 64)
			if err != nil || seq == 0 {
				return usage("SEQ: want a sequence number of AUDIT_DEADLETTER (deadletter list shows them), got %q", args[0])
			}
			js, err := a.connect()
			if err != nil {
				return err
			}
			s, err := js.Stream(c.Context(), projector.DeadLetterStream)
			if err != nil {
				return err
			}
			raw, err := s.GetMsg(c.Context(), seq)
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				return fmt.Errorf("%w: no dead letter %d", errNotFound, seq)
			}
			if err != nil {
				return err
			}
			d := inspect.DeadLetterOf(raw, true)
			return a.emit(d, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "dead letter\t%d, %s UTC, by consumer %s\n", d.Seq, d.Time.Format(time.DateTime), render.Dash(d.Consumer))
				fmt.Fprintf(w, "reason\t%s\n", d.Reason)
				fmt.Fprintf(w, "original\t%s seq %d, subject %s, %d bytes, %s\n", d.OriginalStream, d.OriginalSequence, d.OriginalSubject, d.OriginalSize, d.OriginalHash)
				fmt.Fprintf(w, "inspect\tnats stream get %s %d\n", d.OriginalStream, d.OriginalSequence)
				switch {
				case d.Copy == projector.CopyReference:
					fmt.Fprintf(w, "body\tthe first %d bytes (the original stays in %s):\n", len(raw.Data), d.OriginalStream)
				default:
					fmt.Fprintln(w, "body\t")
				}
				_ = w.Flush()
				if d.Body != "" {
					fmt.Fprintln(w, d.Body)
				} else {
					fmt.Fprintf(w, "(%d bytes, not UTF-8: use --json for base64)\n", len(raw.Data))
				}
			})
		},
	}
	var dryRun bool
	replay := &cobra.Command{
		Use:   "replay SEQ",
		Short: "Judge a dead letter's original event again and, if a store can now hold it, store it",
		Long: `replay takes dead letter SEQ's original message from its stream (AUDIT keeps
every message: the dead letter holds only a copy, or a reference) and judges
it as a projector does: it must decode, be valid, and be on its own change's
subject; its signature is judged with --trust. If it passes — this build
reads a schema version an older projector could not, or the store that
refused it is not the one configured here — it is stored (idempotent: a
stored event is not stored twice, and an older event never replaces a
change's newer state). Nothing is published: the stream is not changed, and
the dead letter stays as the record of what happened.

If it still fails, replay says why and exits 3: resolve its change with
issue get --guidance and issue fix. --dry-run judges without storing.`,
		Example: "  auditflow deadletter replay 3 --dry-run\n  auditflow --store mongo deadletter replay 3",
		Args:    cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			seq, err := strconv.ParseUint(args[0], 10, 64)
			if err != nil || seq == 0 {
				return usage("SEQ: want a sequence number of AUDIT_DEADLETTER (deadletter list shows them), got %q", args[0])
			}
			return a.replayDeadLetter(c.Context(), seq, dryRun)
		},
	}
	replay.Flags().BoolVar(&dryRun, "dry-run", false, "judge the original again, store nothing")
	cmd.AddCommand(list, show, replay)
	return cmd
}

// replayOut is deadletter replay --json.
type replayOut struct {
	DeadLetter       uint64 `json:"deadLetter"`
	OriginalStream   string `json:"originalStream"`
	OriginalSequence uint64 `json:"originalSequence"`
	Pipeline         string `json:"pipeline,omitempty"`
	ChangeID         string `json:"changeId,omitempty"`
	Stored           bool   `json:"stored"`
	DryRun           bool   `json:"dryRun"`
	Problem          string `json:"problem,omitempty"` // why a store still cannot hold it
	Trust            string `json:"trust,omitempty"`   // the trust list's objection, stored with the event
}

func (a *app) replayDeadLetter(ctx context.Context, seq uint64, dryRun bool) error {
	js, err := a.connect()
	if err != nil {
		return err
	}
	dl, err := js.Stream(ctx, projector.DeadLetterStream)
	if err != nil {
		return err
	}
	raw, err := dl.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("%w: no dead letter %d", errNotFound, seq)
	}
	if err != nil {
		return err
	}
	d := inspect.DeadLetterOf(raw, false)
	sc := a.streamConfig()
	if d.OriginalStream != sc.Name || d.OriginalSequence == 0 {
		return fmt.Errorf("%w: dead letter %d is a copy of %s seq %d, not of the audit stream %s", errProblems, seq, d.OriginalStream, d.OriginalSequence, sc.Name)
	}
	src, err := js.Stream(ctx, sc.Name)
	if err != nil {
		return err
	}
	orig, err := src.GetMsg(ctx, d.OriginalSequence)
	if err != nil {
		return fmt.Errorf("read the original, %s seq %d: %w", sc.Name, d.OriginalSequence, err)
	}
	list, err := a.trustList()
	if err != nil {
		return err
	}
	out := replayOut{DeadLetter: seq, OriginalStream: sc.Name, OriginalSequence: d.OriginalSequence, DryRun: dryRun}
	e, err := events.Decode(orig.Data)
	if err == nil {
		err = events.CheckSubject(sc.SubjectPrefix, orig.Subject, e)
	}
	if err != nil {
		out.Problem = strings.TrimPrefix(err.Error(), "events: ")
	} else {
		out.Pipeline, out.ChangeID = e.Pipeline, e.ChangeID
		hash := events.Hash(orig.Data)
		signer, signature, v := list.CheckHeader(orig.Header.Get(trust.Header), trust.Signed{Pipeline: e.Pipeline, Type: e.Type, Seq: orig.Sequence, Hash: hash})
		out.Trust = events.Truncate(v.Problem, stores.MaxTrustLen)
		if !dryRun {
			st, err := a.openStore(ctx)
			if err != nil {
				return err
			}
			rec := stores.Record{Seq: orig.Sequence, Hash: hash, Signer: signer, Signature: signature, Trust: out.Trust, Event: e}
			err = st.Apply(ctx, stores.Batch{Checkpoint: "deadletter-replay", Records: []stores.Record{rec}})
			if errors.Is(err, stores.ErrInvalidRecord) {
				out.Problem = "the store refuses it: " + err.Error()
			} else if err != nil {
				return err
			}
			out.Stored = out.Problem == ""
		}
	}
	err = a.emit(out, func(w *tabwriter.Writer) {
		switch {
		case out.Problem != "":
			fmt.Fprintf(w, "dead letter %d (%s seq %d) still cannot be stored: %s\n", seq, sc.Name, d.OriginalSequence, out.Problem)
			fmt.Fprintln(w, "its change waits for an operator: auditflow issue get -p PIPELINE -c CHANGE --guidance, then issue fix")
		case dryRun:
			fmt.Fprintf(w, "dead letter %d (%s seq %d): %s/%s would be stored (--dry-run)\n", seq, sc.Name, d.OriginalSequence, out.Pipeline, out.ChangeID)
		default:
			fmt.Fprintf(w, "dead letter %d (%s seq %d): stored %s/%s in %s\n", seq, sc.Name, d.OriginalSequence, out.Pipeline, out.ChangeID, a.store.Describe())
		}
		if out.Trust != "" {
			fmt.Fprintf(w, "untrusted: %s (stored with its verdict: its change's issue stays open)\n", out.Trust)
		}
	})
	if err == nil && out.Problem != "" {
		return fmt.Errorf("%w: still cannot be stored", errProblems)
	}
	return err
}
