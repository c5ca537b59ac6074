package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/verify"
)

// progress reports a long operation: a bar on a terminal, a line every
// few seconds otherwise (CI, files, journald), and, if it printed any, one
// at the end. A quick operation prints nothing off a terminal.
type progress struct {
	bar      *progressbar.ProgressBar
	w        io.Writer
	what     string
	every    time.Duration // between lines off a terminal
	start    time.Time
	lastLine time.Time
	done     int64
	total    int64 // < 1: unknown (verify reads until it has compared all)
	printed  bool  // a line was printed since the last change
	any      bool  // a line was printed
}

func (a *app) newProgress(what string, total int64) *progress {
	p := &progress{w: a.errOut, what: what, every: 5 * time.Second, start: time.Now(), lastLine: time.Now()}
	if f, ok := a.errOut.(*os.File); ok && term.IsTerminal(int(f.Fd())) && !a.asJSON {
		p.bar = progressbar.NewOptions64(total, progressbar.OptionSetWriter(a.errOut), progressbar.OptionSetDescription(what),
			progressbar.OptionShowCount(), progressbar.OptionShowIts(), progressbar.OptionSetItsString("events"),
			progressbar.OptionThrottle(100*time.Millisecond), progressbar.OptionClearOnFinish(), progressbar.OptionFullWidth())
	}
	return p
}

// set records how far the operation has got; total < 1 is unknown, and
// rate 0 is measured here.
func (p *progress) set(done, total int64, rate float64, eta time.Duration) {
	if p.bar != nil {
		p.bar.ChangeMax64(total)
		_ = p.bar.Set64(done)
		return
	}
	p.done, p.total, p.printed = done, total, false
	if time.Since(p.lastLine) >= p.every || (done == total && total > 0) {
		p.lastLine = time.Now()
		p.line(rate, eta)
	}
}

// line prints where the operation is off a terminal: with a known total,
// how much of it and the time left; without, how many events so far.
func (p *progress) line(rate float64, eta time.Duration) {
	if rate <= 0 {
		if secs := time.Since(p.start).Seconds(); secs > 0 {
			rate = float64(p.done) / secs
		}
	}
	p.printed, p.any = true, true
	if p.total < 1 {
		fmt.Fprintf(p.w, "%s: %d events read, %.0f/s\n", p.what, p.done, rate)
		return
	}
	if p.done >= p.total {
		fmt.Fprintf(p.w, "%s: %d/%d events, %.0f/s, done\n", p.what, p.done, p.total, rate)
		return
	}
	fmt.Fprintf(p.w, "%s: %d/%d events, %.0f/s, about %s left\n", p.what, p.done, p.total, rate, eta.Round(time.Second))
}

// replay reports a replay's progress.
func (p *progress) replay(r projector.ReplayProgress) {
	p.set(int64(r.Seq-r.First+1), int64(r.Target-r.First+1), r.EventsPerS, r.Remaining())
}

func (p *progress) finish() {
	if p.bar != nil {
		_ = p.bar.Finish()
		return
	}
	if p.any && !p.printed { // where it ended, unless just said
		p.line(0, 0)
	}
}

func (a *app) replayCommand() *cobra.Command {
	var fromSeq uint64
	var since string
	var batch, writers int
	var checkpoint string
	var reset bool
	cmd := &cobra.Command{
		Use:   "replay",
		Short: "Rebuild the store from the stream (disaster recovery, or moving to another store kind)",
		Long: `replay reads the audit stream with an ephemeral consumer of its own — the live
projectors' consumers are not touched — and applies it to the configured store: from the
first event (default, or --from-seq / --since), up to the last event present
when it starts. It rides out a cluster's fail-overs (a node lost, a leader
change): it starts again after the last event it stored. It records its progress in the store, so an interrupted replay
continues where it stopped when run again, and running it twice changes
nothing. Into an empty store it uses the store's bulk path when it has one.

To migrate, point --store and its flags at the new store (e.g. from mongo to
dynamodb) and replay; to rebuild a damaged store in place, add --reset (which
always rebuilds from the first event: it refuses --from-seq and --since).
Give it the projectors' --trust: replay judges signatures as they do.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			hasFrom, hasSince := cmd.Flags().Changed("from-seq"), cmd.Flags().Changed("since")
			switch {
			case reset && (hasFrom || hasSince):
				// Wiping the store and rebuilding only part of it would
				// leave it without the events before the start.
				return usage("--reset rebuilds the whole store from the first event: it cannot be combined with --from-seq or --since")
			case hasFrom && hasSince:
				return usage("--from-seq and --since both say where to start: give one")
			case hasFrom && fromSeq == 0:
				return usage("--from-seq: sequences start at 1")
			}
			list, err := a.requiredTrustList()
			if err != nil {
				return err
			}
			cfg := projector.ReplayConfig{Stream: a.streamConfig(), FromSeq: fromSeq, BatchSize: batch, Writers: writers, Checkpoint: checkpoint, Trust: list, Logger: a.log,
				Claim: []string{a.consumerName()}}
			if hasSince {
				t, err := parseSince(since, time.Now())
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
				cfg.FromSeq = 1
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
	cmd.Flags().Uint64Var(&fromSeq, "from-seq", 0, "start at this stream sequence (default: after the replay checkpoint, or the first event); not with --since or --reset")
	cmd.Flags().StringVar(&since, "since", "", "start at events stored since a time (RFC 3339) or a duration ago (e.g. 24h); not with --from-seq or --reset")
	cmd.Flags().IntVar(&batch, "batch", 1000, "events per store write")
	cmd.Flags().IntVar(&writers, "writers", 1, "store writes at once (1..256); each change's events stay with one writer, the checkpoint stays contiguous; remote stores gain most")
	cmd.Flags().StringVar(&checkpoint, "checkpoint", "replay", "name of the progress record kept in the store")
	cmd.Flags().BoolVar(&reset, "reset", false, "delete every row of the store first (it is rebuilt from the stream)")
	return cmd
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
	list, err := a.requiredTrustList()
	if err != nil {
		return nil, err
	}
	bar := a.newProgress("verify", -1)
	rep, err := verify.Verify(ctx, js, st, verify.Config{Stream: a.streamConfig(), Trust: list, Logger: a.log,
		Progress: func(streamRead, storeRead int) { bar.set(int64(streamRead+storeRead), -1, 0, 0) }})
	bar.finish()
	return rep, err
}

func (a *app) verifyCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "verify",
		Short: "Compare the store with the stream, check the hash chains, lock tokens and subjects; exit 3 on drift, a broken link, or an open stream problem",
		Long: `verify reads the stream up to its last event when verify starts (the
snapshot) and the store side by side, and reports:

  drift        rows missing from the store, rows the stream never had, rows
               that differ, issue rows that do not match (repair fixes them)
  hash chain   an event that does not hash to what its successor recorded:
               the stream or the store was altered
  lock tokens  events written with a stale lock token (a runner without the
               lock), until an overlap record or a resolution follows
  subjects     a message on a change's subject that does not decode, or a
               valid event published on another change's subject: runs of
               that change stop at it until an operator resolves the change
  downgrades   a schema-version-1 event (no hash chain) on a change whose
               events carry the chain: an old writer, or a forged event
  chain        an event that does not extend its change's chain: the message
               before it is not the one it names (a copy of an earlier event
               published again, a fork), until a resolution follows
  signatures   with --trust: events, in the stream and (judged from the row)
               in the store, that are unsigned, signed by an unknown or
               revoked key or one outside its roles or pipelines, whose
               signature is not over their bytes, or replayed, until a
               trusted operator's resolution follows

Nothing newer than the snapshot is judged, and what looks wrong because a
projector was a moment behind is read again over a few seconds before it is
reported: verify may run while projectors write. On a cluster it rides out
a node's loss or a leader change. It exits 3 while any of these is open, and
says for each what to do.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			at := time.Now()
			rep, err := a.runVerify(cmd.Context())
			if err != nil {
				return err
			}
			if err := a.emit(rep, func(w *tabwriter.Writer) { verifyTable(w, rep) }); err != nil {
				return err
			}
			a.recordVerify(cmd.Context(), rep, at)
			if rep.Problems() {
				return errProblems
			}
			return nil
		},
	}
}

// recordVerify records rep's result on the results stream (verify.Record)
// for the console and monitoring. Failing to record does not change
// verify's verdict or exit code: it is said on stderr. The embedded mode
// creates the stream (its server is this process's); a deployment's is
// made by auditflow init.
func (a *app) recordVerify(ctx context.Context, rep *verify.Report, at time.Time) {
	js, err := a.connect()
	if err == nil && a.embedded {
		_, err = js.CreateOrUpdateStream(ctx, verify.ResultsStreamConfig(1))
	}
	if err == nil {
		err = verify.Record(ctx, js, rep.Result(a.store.Kind, whoAmI(), at))
	}
	if err != nil {
		fmt.Fprintf(a.errOut, "auditflow: the verify result was not recorded (the console will not show it): %v\n", err)
	}
}

const shown = 20 // rows of each kind printed in tables; --json has all

// showRows prints up to shown items of one kind, a line each under label,
// and how many more there are.
func showRows[T any](w io.Writer, label, plural string, items []T, line func(T) string) {
	for i, it := range items {
		if i == shown {
			fmt.Fprintf(w, "\t… %d more %s\n", len(items)-shown, plural)
			return
		}
		fmt.Fprintf(w, "%s\t%s\n", label, line(it))
	}
}

func verifyTable(w *tabwriter.Writer, rep *verify.Report) {
	fmt.Fprintf(w, "stream\t%d events (%d undecodable) up to sequence %d, %d changes\n", rep.StreamEvents, rep.Undecodable, rep.LastSeq, rep.Changes)
	fmt.Fprintf(w, "store\t%d changeLog rows\n", rep.StoreRows)
	fmt.Fprintf(w, "drift\t%d missing, %d extra, %d altered rows; %d issue rows wrong\n", len(rep.Missing), len(rep.Extra), len(rep.Mismatched), len(rep.Issues))
	fmt.Fprintf(w, "hash chain\t%d broken links in the stream, %d in the store; %d unchained events, %d rows without hash\n",
		len(rep.StreamChain), len(rep.StoreChain), rep.Unchained, rep.Unhashed)
	if b, ok := rep.FirstBreak(); ok {
		fmt.Fprintf(w, "FIRST BROKEN LINK\t%s\n", b)
	}
	bad, downgrades := rep.OpenStreamProblems()
	fmt.Fprintf(w, "subjects\t%d events on another change's subject, %d undecodable messages; %d not resolved\n",
		len(rep.WrongSubject), len(rep.Unreadable), len(bad))
	fmt.Fprintf(w, "downgrades\t%d schema-version-1 events after their change's hash chain started, %d not acknowledged\n",
		len(rep.Downgrades), len(downgrades))
	showRows(w, "wrong subject", "on the wrong subject", rep.WrongSubject, verify.BadMessage.String)
	showRows(w, "undecodable", "undecodable", rep.Unreadable, verify.BadMessage.String)
	showRows(w, "downgrade", "downgrades", rep.Downgrades, verify.Downgrade.String)
	fmt.Fprintf(w, "chain\t%d events out of their change's chain (copies published again, forks), %d not resolved\n",
		len(rep.OutOfChain), len(rep.OpenOutOfChain()))
	showRows(w, "out of chain", "out of their chain", rep.OutOfChain, verify.OutOfChain.String)
	signaturesTable(w, rep)
	unacked := rep.Unacknowledged()
	fmt.Fprintf(w, "lock tokens\t%d events written with a stale lock token, %d not acknowledged\n", len(rep.StaleTokens), len(unacked))
	showRows(w, "stale token", "stale-token events", rep.StaleTokens, verify.StaleToken.String)
	showRows(w, "missing", "missing", rep.Missing, func(r verify.Row) string {
		return fmt.Sprintf("%s/%s seq %d %s", r.Pipeline, r.ChangeID, r.Seq, r.Type)
	})
	showRows(w, "extra", "extra", rep.Extra, func(r verify.Row) string {
		return fmt.Sprintf("%s/%s seq %d event %s (not in the stream)", r.Pipeline, r.ChangeID, r.Seq, r.EventID)
	})
	showRows(w, "altered", "altered", rep.Mismatched, func(m verify.Mismatch) string {
		return fmt.Sprintf("%s/%s seq %d: %v differ from the stream", m.Pipeline, m.ChangeID, m.Seq, m.Fields)
	})
	showRows(w, "issue", "issue rows", rep.Issues, func(d verify.IssueDrift) string {
		return fmt.Sprintf("%s/%s: %s", d.Pipeline, d.ChangeID, d.Problem)
	})
	for i, c := range rep.Drifted {
		if i == shown {
			break
		}
		fmt.Fprintf(w, "change\t%s/%s: stream %d events (digest %s), store %d rows (digest %s)\n",
			c.Pipeline, c.ChangeID, c.StreamEvents, c.StreamDigest, c.StoreRows, c.StoreDigest)
	}
	results := streamAdvice(rep)
	if rep.Drift() {
		results = append(results, "DRIFT: run `auditflow repair --dry-run` to see the fix")
	} else {
		results = append(results, fmt.Sprintf("the store matches the stream (%s)", rep.Elapsed.Round(time.Millisecond)))
	}
	for _, r := range results {
		fmt.Fprintf(w, "result\t%s\n", r)
	}
}

// streamAdvice says what to do about each problem of the stream itself,
// which no store repair can fix: broken chains, open bad messages and
// downgrades, unacknowledged stale-token writes.
func streamAdvice(rep *verify.Report) []string {
	var out []string
	if rep.Tampered() {
		out = append(out, "TAMPERED: an event does not hash to what its successor recorded; restore the stream from a trusted copy")
	}
	bad, downgrades := rep.OpenStreamProblems()
	for i, b := range bad {
		if i == shown {
			out = append(out, fmt.Sprintf("… and %d more changes stopped by a bad message (--json lists them)", len(bad)-shown))
			break
		}
		what := "does not decode"
		if b.Event != nil {
			what = fmt.Sprintf("is an event for change %s/%s, published on change %s/%s's subject (a hand-published or misrouted message: not tampering; runs of %s/%s do not see it, so if it records something real, check that change's target too)",
				b.Event.Pipeline, b.Event.ChangeID, b.Pipeline, b.ChangeID, b.Event.Pipeline, b.Event.ChangeID)
		}
		out = append(out, fmt.Sprintf("BAD MESSAGE: seq %d %s. Runs of %s/%s stop at it: inspect it (nats stream get %s %d) and the change's target, then record what the target holds: %s",
			b.Seq, what, b.Pipeline, b.ChangeID, streamName, b.Seq, fixCommand(b.Pipeline, b.ChangeID)))
	}
	for i, d := range downgrades {
		if i == shown {
			out = append(out, fmt.Sprintf("… and %d more downgrades (--json lists them)", len(downgrades)-shown))
			break
		}
		out = append(out, fmt.Sprintf("DOWNGRADE: seq %d, a schema-version-1 %s without the hash chain on %s/%s, whose events carry it since seq %d: an old writer, or an event forged past the chain. Find out who wrote it (auditflow issue get -p %s -c %s), inspect the target, then record what it holds: %s",
			d.Seq, d.Type, d.Pipeline, d.ChangeID, d.ChainSince, shellQuote(d.Pipeline), shellQuote(d.ChangeID), fixCommand(d.Pipeline, d.ChangeID)))
	}
	for i, o := range rep.OpenOutOfChain() {
		if i == shown {
			out = append(out, fmt.Sprintf("… and %d more events out of their chain (--json lists them)", len(rep.OpenOutOfChain())-shown))
			break
		}
		out = append(out, fmt.Sprintf("OUT OF CHAIN: seq %d, %s on %s/%s: %s. It is not where it was written (a copy of an earlier event published again, or a fork): stores show it as OUT_OF_CHAIN and runs of the change stop at it. Find out who published it (nats stream get %s %d), inspect the target, then record what it holds: %s",
			o.Seq, o.Type, o.Pipeline, o.ChangeID, o.Problem, streamName, o.Seq, fixCommand(o.Pipeline, o.ChangeID)))
	}
	untrusted := untrustedAdvice(rep)
	for i, u := range untrusted {
		if i == shown {
			out = append(out, fmt.Sprintf("… and %d more untrusted events (--json lists them)", len(untrusted)-shown))
			break
		}
		out = append(out, fmt.Sprintf("UNTRUSTED: seq %d, %s on %s/%s (%s): %s. Anyone who can publish on the audit subjects could have written it: find out who (nats stream get %s %d), inspect the target, then record what it holds, signed with an operator key the trust list names: %s --signing-key KEY",
			u.Seq, u.Type, u.Pipeline, u.ChangeID, u.Where, u.Problem, streamName, u.Seq, fixCommand(u.Pipeline, u.ChangeID)))
	}
	if len(rep.Unacknowledged()) > 0 {
		out = append(out, "STALE TOKENS: a runner wrote without the pipeline lock: inspect the target for each change above, then record what it holds with `auditflow issue fix` (which acknowledges it)")
	}
	return out
}

// streamName is the audit stream's name in advice (the CLI uses the default).
const streamName = "AUDIT"

// fixCommand is the command that records an operator's decision.
func fixCommand(pipeline, change string) string {
	return fmt.Sprintf("auditflow issue fix -p %s -c %s -r applied|rolled-back --reason \"...\"", shellQuote(pipeline), shellQuote(change))
}

// shellQuote quotes s for a POSIX shell if it needs it.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r == '-' || r == '_' || r == '.' || r == '/' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z')
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// printAdvice prints what a store repair cannot fix.
func printAdvice(w *tabwriter.Writer, advice []string) {
	if len(advice) == 0 {
		return
	}
	fmt.Fprintln(w, "\nthe stream has problems a store repair cannot fix:")
	for _, a := range advice {
		fmt.Fprintf(w, "  - %s\n", a)
	}
}

func (a *app) repairCommand() *cobra.Command {
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "repair",
		Short: "Make the store match the stream: print the plan (--dry-run) or carry it out",
		Long: `repair runs verify, then corrects the store from the stream: missing rows
and issue rows missing or behind are re-applied from the stream through the
store's normal, sequence-guarded writes (so a projector writing meanwhile is
never rolled back); altered rows are rewritten, stray rows deleted, issue rows
wrong at their own sequence rewritten unless they moved since verify read them.
A store without targeted repair (couchbase) is rebuilt instead when it needs
more than re-applied events: reset, then replayed (stop its projector first). Problems of the stream itself are not something a
store repair can fix, and repair says so and exits 3: a broken hash chain
(restore the stream from a trusted copy), a bad message on a change's
subject or a downgrade (resolve the change with issue fix), a stale-token
write (inspect the target, then issue fix).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			rep, err := a.runVerify(ctx)
			if err != nil {
				return err
			}
			list, err := a.requiredTrustList()
			if err != nil {
				return err
			}
			plan, err := verify.PlanRepair(ctx, a.js, a.st, rep, verify.Config{Stream: a.streamConfig(), Trust: list})
			if errors.Is(err, verify.ErrNeedsTrust) {
				return usageError{err}
			}
			if err != nil {
				return err
			}
			lines := plan.Lines()
			// What a store repair cannot fix is said, not left out: a
			// stream problem leaves the command with exit 3.
			advice := streamAdvice(rep)
			if dryRun || plan.Empty() {
				err := a.emit(map[string]any{"dryRun": dryRun, "corrections": lines, "streamProblems": advice}, func(w *tabwriter.Writer) {
					if plan.Empty() {
						fmt.Fprintln(w, "nothing to repair in the store: it matches the stream")
					} else {
						for _, l := range lines {
							fmt.Fprintln(w, l)
						}
						fmt.Fprintf(w, "\n%d correction(s); run without --dry-run to apply\n", len(lines))
					}
					printAdvice(w, advice)
				})
				if err == nil && len(advice) > 0 {
					return errProblems
				}
				return err
			}
			bar := a.newProgress("rebuild", 0)
			err = verify.Repair(ctx, a.js, a.st, plan, projector.ReplayConfig{Stream: a.streamConfig(), Trust: list, Logger: a.log, Progress: bar.replay})
			bar.finish()
			if err != nil {
				return err
			}
			after, err := verify.Verify(ctx, a.js, a.st, verify.Config{Stream: a.streamConfig(), Trust: list, Logger: a.log})
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
				printAdvice(w, streamAdvice(after))
			}); err != nil {
				return err
			}
			if after.Drift() || len(streamAdvice(after)) > 0 {
				return errProblems
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print what would change, change nothing")
	return cmd
}

// whoAmI is $USER@host, for records of who ran a command.
func whoAmI() string {
	host, _ := os.Hostname()
	if u := os.Getenv("USER"); u != "" {
		return u + "@" + host
	}
	return host
}
