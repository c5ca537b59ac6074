package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/verify"
)

// progress reports a long operation: a bar on a terminal, a log line every
// few seconds otherwise (CI, files, journald).
type progress struct {
	bar      *progressbar.ProgressBar
	w        io.Writer
	what     string
	lastLine time.Time
}

func (a *app) newProgress(what string, total int64) *progress {
	p := &progress{w: a.errOut, what: what, lastLine: time.Now()}
	if f, ok := a.errOut.(*os.File); ok && term.IsTerminal(int(f.Fd())) && !a.asJSON {
		p.bar = progressbar.NewOptions64(total, progressbar.OptionSetWriter(a.errOut), progressbar.OptionSetDescription(what),
			progressbar.OptionShowCount(), progressbar.OptionShowIts(), progressbar.OptionSetItsString("events"),
			progressbar.OptionThrottle(100*time.Millisecond), progressbar.OptionClearOnFinish(), progressbar.OptionFullWidth())
	}
	return p
}

func (p *progress) set(done, total int64, rate float64, eta time.Duration) {
	if p.bar != nil {
		p.bar.ChangeMax64(total)
		_ = p.bar.Set64(done)
		return
	}
	if time.Since(p.lastLine) >= 5*time.Second || (done == total && total > 0) {
		p.lastLine = time.Now()
		fmt.Fprintf(p.w, "%s: %d/%d events, %.0f events/s, about %s left\n", p.what, done, total, rate, eta.Round(time.Second))
	}
}

// replay reports a replay's progress.
func (p *progress) replay(r projector.ReplayProgress) {
	p.set(int64(r.Seq-r.First+1), int64(r.Target-r.First+1), r.EventsPerS, r.Remaining())
}

func (p *progress) finish() {
	if p.bar != nil {
		_ = p.bar.Finish()
	}
}

func (a *app) replayCommand() *cobra.Command {
	var fromSeq uint64
	var since string
	var batch int
	var checkpoint string
	var reset bool
	cmd := &cobra.Command{
		Use:   "replay",
		Short: "Rebuild the store from the stream (disaster recovery, or moving to another store kind)",
		Long: `replay reads the audit stream with an ordered consumer — the live projectors'
consumers are not touched — and applies it to the configured store: from the
first event (default, or --from-seq / --since), up to the last event present
when it starts. It records its progress in the store, so an interrupted replay
continues where it stopped when run again, and running it twice changes
nothing. Into an empty store it uses the store's bulk path when it has one.

To migrate, point --store and its flags at the new store (e.g. from mongo to
dynamodb) and replay; to rebuild a damaged store in place, add --reset.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			cfg := projector.ReplayConfig{Stream: a.streamConfig(), FromSeq: fromSeq, BatchSize: batch, Checkpoint: checkpoint, Logger: a.log}
			if since != "" {
				t, err := parseSince(since)
				if err != nil {
					return usage("--since: %v", err)
				}
				cfg.Since = t
			}
			js, err := a.connect()
			if err != nil {
				return err
			}
			st, err := a.openStore(ctx)
			if err != nil {
				return err
			}
			if reset {
				if err := st.Reset(ctx); err != nil {
					return fmt.Errorf("reset: %w", err)
				}
				if cfg.FromSeq == 0 && cfg.Since.IsZero() {
					cfg.FromSeq = 1
				}
			}
			bar := a.newProgress("replay", 0)
			cfg.Progress = bar.replay
			prog, err := projector.Replay(ctx, js, st, cfg)
			bar.finish()
			if err != nil {
				return err
			}
			return a.emit(prog, func(w *tabwriter.Writer) {
				if prog.Applied == 0 && prog.Skipped == 0 {
					fmt.Fprintf(w, "nothing to replay: the store is up to date with the stream (sequence %d)\n", prog.Target)
					return
				}
				fmt.Fprintf(w, "replayed %d events (seq %d..%d) into %s in %s, %.0f events/s; %d undecodable skipped\n",
					prog.Applied, prog.First, prog.Seq, a.store.Describe(), prog.Elapsed.Round(time.Millisecond), prog.EventsPerS, prog.Skipped)
			})
		},
	}
	cmd.Flags().Uint64Var(&fromSeq, "from-seq", 0, "start at this stream sequence (default: after the replay checkpoint, or the first event)")
	cmd.Flags().StringVar(&since, "since", "", "start at events stored since a time (RFC 3339) or a duration ago (e.g. 24h)")
	cmd.Flags().IntVar(&batch, "batch", 1000, "events per store write")
	cmd.Flags().StringVar(&checkpoint, "checkpoint", "replay", "name of the progress record kept in the store")
	cmd.Flags().BoolVar(&reset, "reset", false, "delete every row of the store first (it is rebuilt from the stream)")
	return cmd
}

func parseSince(s string) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		return time.Now().Add(-d), nil
	}
	return time.Parse(time.RFC3339, s)
}

func (a *app) runVerify(ctx context.Context) (*verify.Report, error) {
	js, err := a.connect()
	if err != nil {
		return nil, err
	}
	st, err := a.openStore(ctx)
	if err != nil {
		return nil, err
	}
	bar := a.newProgress("verify", -1)
	rep, err := verify.Verify(ctx, js, st, verify.Config{Stream: a.streamConfig(), Logger: a.log,
		Progress: func(streamRead, storeRead int) { bar.set(int64(streamRead+storeRead), -1, 0, 0) }})
	bar.finish()
	return rep, err
}

func (a *app) verifyCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "verify",
		Short: "Compare the store with the stream, check the hash chains and lock tokens; exit 3 on drift, a broken link or an unacknowledged stale-token write",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rep, err := a.runVerify(cmd.Context())
			if err != nil {
				return err
			}
			if err := a.emit(rep, func(w *tabwriter.Writer) { verifyTable(w, rep) }); err != nil {
				return err
			}
			if rep.Drift() || rep.Tampered() || len(rep.Unacknowledged()) > 0 {
				return errProblems
			}
			return nil
		},
	}
}

const shown = 20 // rows of each kind printed in tables; --json has all

func verifyTable(w *tabwriter.Writer, rep *verify.Report) {
	fmt.Fprintf(w, "stream\t%d events (%d undecodable) up to sequence %d, %d changes\n", rep.StreamEvents, rep.Undecodable, rep.LastSeq, rep.Changes)
	fmt.Fprintf(w, "store\t%d changeLog rows\n", rep.StoreRows)
	fmt.Fprintf(w, "drift\t%d missing, %d extra, %d altered rows; %d issue rows wrong\n", len(rep.Missing), len(rep.Extra), len(rep.Mismatched), len(rep.Issues))
	fmt.Fprintf(w, "hash chain\t%d broken links in the stream, %d in the store; %d unchained events, %d rows without hash\n",
		len(rep.StreamChain), len(rep.StoreChain), rep.Unchained, rep.Unhashed)
	if b, ok := rep.FirstBreak(); ok {
		fmt.Fprintf(w, "FIRST BROKEN LINK\t%s\n", b)
	}
	unacked := rep.Unacknowledged()
	fmt.Fprintf(w, "lock tokens\t%d events written with a stale lock token, %d not acknowledged\n", len(rep.StaleTokens), len(unacked))
	for i, s := range rep.StaleTokens {
		if i == shown {
			fmt.Fprintf(w, "\t… %d more stale-token events\n", len(rep.StaleTokens)-shown)
			break
		}
		fmt.Fprintf(w, "stale token\t%s\n", s)
	}
	for i, r := range rep.Missing {
		if i == shown {
			fmt.Fprintf(w, "\t… %d more missing\n", len(rep.Missing)-shown)
			break
		}
		fmt.Fprintf(w, "missing\t%s/%s seq %d %s\n", r.Pipeline, r.ChangeID, r.Seq, r.Type)
	}
	for i, r := range rep.Extra {
		if i == shown {
			fmt.Fprintf(w, "\t… %d more extra\n", len(rep.Extra)-shown)
			break
		}
		fmt.Fprintf(w, "extra\t%s/%s seq %d event %s (not in the stream)\n", r.Pipeline, r.ChangeID, r.Seq, r.EventID)
	}
	for i, m := range rep.Mismatched {
		if i == shown {
			fmt.Fprintf(w, "\t… %d more altered\n", len(rep.Mismatched)-shown)
			break
		}
		fmt.Fprintf(w, "altered\t%s/%s seq %d: %v differ from the stream\n", m.Pipeline, m.ChangeID, m.Seq, m.Fields)
	}
	for i, d := range rep.Issues {
		if i == shown {
			fmt.Fprintf(w, "\t… %d more issue rows\n", len(rep.Issues)-shown)
			break
		}
		fmt.Fprintf(w, "issue\t%s/%s: %s\n", d.Pipeline, d.ChangeID, d.Problem)
	}
	for i, c := range rep.Drifted {
		if i == shown {
			break
		}
		fmt.Fprintf(w, "change\t%s/%s: stream %d events (digest %s), store %d rows (digest %s)\n",
			c.Pipeline, c.ChangeID, c.StreamEvents, c.StreamDigest, c.StoreRows, c.StoreDigest)
	}
	switch {
	case !rep.Drift() && !rep.Tampered() && len(unacked) > 0:
		fmt.Fprintln(w, "result\tthe store matches the stream, but a runner wrote without the pipeline lock: inspect the target for each change above, then record what it holds with `auditflow issue fix` (which acknowledges it)")
	case !rep.Drift() && !rep.Tampered():
		fmt.Fprintf(w, "result\tthe store matches the stream (%s)\n", rep.Elapsed.Round(time.Millisecond))
	case rep.Drift():
		fmt.Fprintln(w, "result\tDRIFT: run `auditflow repair --dry-run` to see the fix")
	default:
		fmt.Fprintln(w, "result\tTAMPERED: an event does not hash to what its successor recorded; restore the stream from a trusted copy")
	}
}

func (a *app) repairCommand() *cobra.Command {
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "repair",
		Short: "Make the store match the stream: print the plan (--dry-run) or carry it out",
		Long: `repair runs verify, then corrects the store from the stream: altered and
missing rows are written from the stream, stray rows deleted, issue rows
recomputed. Stores without targeted repair (couchbase) are rebuilt instead:
reset, then replayed. A broken hash chain in the stream is not something a
store repair can fix: restore the stream from a trusted copy.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			rep, err := a.runVerify(ctx)
			if err != nil {
				return err
			}
			plan, err := verify.PlanRepair(ctx, a.js, a.st, rep, verify.Config{Stream: a.streamConfig()})
			if err != nil {
				return err
			}
			lines := plan.Lines()
			if dryRun || plan.Empty() {
				return a.emit(map[string]any{"dryRun": dryRun, "corrections": lines}, func(w *tabwriter.Writer) {
					if plan.Empty() {
						fmt.Fprintln(w, "nothing to repair: the store matches the stream")
						return
					}
					for _, l := range lines {
						fmt.Fprintln(w, l)
					}
					fmt.Fprintf(w, "\n%d correction(s); run without --dry-run to apply\n", len(lines))
				})
			}
			bar := a.newProgress("rebuild", 0)
			err = verify.Repair(ctx, a.js, a.st, plan, projector.ReplayConfig{Stream: a.streamConfig(), Logger: a.log, Progress: bar.replay})
			bar.finish()
			if err != nil {
				return err
			}
			after, err := verify.Verify(ctx, a.js, a.st, verify.Config{Stream: a.streamConfig(), Logger: a.log})
			if err != nil {
				return err
			}
			if err := a.emit(map[string]any{"corrections": lines, "after": after}, func(w *tabwriter.Writer) {
				for _, l := range lines {
					fmt.Fprintln(w, l)
				}
				if after.Drift() {
					fmt.Fprintf(w, "\nstill drifting after repair: %d missing, %d extra, %d altered, %d issues (the projector may be writing; run verify again)\n",
						len(after.Missing), len(after.Extra), len(after.Mismatched), len(after.Issues))
				} else {
					fmt.Fprintf(w, "\nrepaired: %d correction(s); the store matches the stream\n", len(lines))
				}
			}); err != nil {
				return err
			}
			if after.Drift() {
				return errProblems
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print what would change, change nothing")
	return cmd
}
