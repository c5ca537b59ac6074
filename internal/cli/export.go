package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/bundle"
	"github.com/auditflow/auditflow/internal/siem"
	"github.com/auditflow/auditflow/internal/timeflag"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/trust"
)

// bundleCommands are export and verify-bundle (see package bundle).
func (a *app) bundleCommands() []*cobra.Command {
	return []*cobra.Command{a.exportCommand(), a.verifyBundleCommand()}
}

func (a *app) exportCommand() *cobra.Command {
	var out, pipeline, change, since, until, format, consumer string
	var follow bool
	cmd := &cobra.Command{
		Use:   "export --out FILE | --format ndjson [--follow]",
		Short: "Write a signed, self-contained audit bundle of the stream that anyone can check offline (verify-bundle)",
		Long: `export writes a gzip-compressed tar (see docs/audit-bundle.md): the stream's
messages in range, exactly as stored (events.ndjson), the trust list in force
(trust.yaml), a manifest with counts, chain heads and what export found
wrong, signed by --signing-key (manifest.json, manifest.sig), and a report
for people (report.html).

--pipeline, --change, --since and --until (event time) choose the changes:
each chosen change is exported from its first event, those before --since
marked as context, so that its hash chain can be checked from the start.
The signing key must be an operator's in the trust list for the bundle to
verify; in the embedded mode the local key signs.

--format ndjson writes, instead of a bundle, the stream to stdout as
CloudEvents, one JSON document a line, for a SIEM — with --follow, from a
durable consumer until interrupted: what 'auditflow feed' does (see its
help and docs/siem.md).`,
		Example: `  auditflow export --out audit.tar.gz                # after runner --embedded: signed with the local key
  auditflow export --out billing.tar.gz --pipeline billing --since 720h --trust trust.yaml --signing-key exporter.nk`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			defer boundMemory()()
			now := time.Now()
			switch format {
			case "ndjson":
				if out != "" || until != "" {
					return usage("--format ndjson writes to stdout from --since on: no --out, no --until")
				}
				cfg := siem.Config{Pipeline: pipeline, Change: change, Consumer: consumer, BatchSize: 1000}
				if since != "" {
					v, err := timeflag.ParseSince(since, now)
					if err != nil {
						return usage("--since: %v", err)
					}
					cfg.Since = v.At(now)
				}
				return a.runFeed(cmd.Context(), cfg, follow)
			case "bundle":
				if follow {
					return usage("--follow goes with --format ndjson")
				}
			default:
				return usage("--format %q: want bundle (the default) or ndjson", format)
			}
			if out == "" {
				return usage("--out FILE is required")
			}
			var from, to time.Time
			if since != "" {
				v, err := timeflag.ParseSince(since, now)
				if err != nil {
					return usage("--since: %v", err)
				}
				from = v.At(now)
			}
			if until != "" {
				v, err := timeflag.Parse(until)
				if err != nil {
					return usage("--until: %v", err)
				}
				to = v.At(now)
			}
			if a.embedded && a.signing.flags.SigningKey == "" {
				if p := filepath.Join(a.dataDir, trust.LocalKeyFile); exists(p) {
					a.signing.flags.SigningKey, a.localKey = p, true
				}
			}
			list, err := a.requiredTrustList()
			if err != nil {
				return err
			}
			signer, _, err := a.loadSigning()
			if err != nil {
				return err
			}
			if list == nil || signer == nil {
				return usage("export needs a trust list (--trust) and an operator's key to sign the bundle (--signing-key)")
			}
			sc := a.streamConfig()
			m, err := a.writeBundle(cmd.Context(), out, list, signer, bundle.Manifest{Stream: sc.Name, SubjectPrefix: sc.SubjectPrefix,
				Filters: bundle.Filters{Pipeline: pipeline, Change: change, Since: since, Until: until}, ExportedAt: now.UTC()}, from, to)
			if err != nil {
				return err
			}
			return a.emit(m, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "bundle\t%s\n", out)
				fmt.Fprintf(w, "events\t%d of %d changes, sequences %d to %d\n", m.Events, len(m.Changes), m.FirstSeq, m.LastSeq)
				fmt.Fprintf(w, "at export\t%d chain breaks, %d untrusted, %d undecodable\n", m.Verify.ChainBreaks, m.Verify.Untrusted, m.Verify.Undecodable)
				fmt.Fprintf(w, "signed by\t%s\n", list.Identity(m.Exporter.Key))
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&out, "out", "", "the bundle file to write (.tar.gz)")
	f.StringVar(&pipeline, "pipeline", "", "only this pipeline's changes")
	f.StringVar(&change, "change", "", "only this change (with --pipeline, or in every pipeline)")
	f.StringVar(&since, "since", "", "only changes with an event at or after this time: "+timeflag.Syntax)
	f.StringVar(&until, "until", "", "only events up to this time: "+timeflag.Syntax)
	f.StringVar(&format, "format", "bundle", "bundle (a signed .tar.gz, --out) or ndjson (CloudEvents lines on stdout, for a SIEM)")
	f.BoolVar(&follow, "follow", false, "with --format ndjson: keep writing new events from a durable consumer until interrupted; a restart continues after the last line written")
	f.StringVar(&consumer, "consumer", siem.DefaultConsumer, "with --follow: the durable consumer (not a projector's)")
	return cmd
}

// memoryLimit is the soft limit export and verify-bundle set on the Go
// heap: they keep state per change, not per event (about half a kilobyte
// a change), and a history of millions of events would otherwise let
// garbage grow the process to twice its live heap between collections.
const memoryLimit = 64 << 20

// boundMemory sets memoryLimit unless GOMEMLIMIT sets another, and
// returns what puts the previous limit back (cli.Main may run in a
// process that does more).
func boundMemory() (restore func()) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return func() {}
	}
	prev := debug.SetMemoryLimit(memoryLimit)
	return func() { debug.SetMemoryLimit(prev) }
}

// errStopped ends a scan whose consumer has failed (with its own error).
var errStopped = errors.New("stopped")

// writeBundle writes the bundle of the chosen changes to path: to a
// temporary file next to it, renamed once whole, so that a failed export
// leaves no half bundle.
func (a *app) writeBundle(ctx context.Context, path string, list *trust.List, signer *trust.Signer, m bundle.Manifest, from, to time.Time) (bundle.Manifest, error) {
	dir := filepath.Dir(path)
	w, err := bundle.NewWriter(dir, list, signer, m)
	if err != nil {
		return m, err
	}
	defer w.Close()
	if err := a.exportLines(ctx, m.Filters.Pipeline, m.Filters.Change, from, to, w.Add); err != nil {
		return m, err
	}
	f, err := os.CreateTemp(dir, ".export-*")
	if err != nil {
		return m, err
	}
	defer os.Remove(f.Name())
	bw := bufio.NewWriterSize(f, 1<<20)
	if m, err = w.Finish(bw); err == nil {
		err = bw.Flush()
	}
	if err != nil {
		f.Close()
		return m, err
	}
	if err := f.Close(); err != nil {
		return m, err
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		return m, err
	}
	return m, os.Rename(f.Name(), path)
}

// exportLines hands add the stream's messages of the chosen changes, in
// sequence order, a batch at a time, while the next batch is read. With
// no time window that is every message of the subjects the pipeline and
// change filters name, in one pass. With one, a first pass finds each
// subject's first and last event in the window; the second hands on the
// subjects that have one, from their first message (those before the
// window marked as context) to their last in the window.
func (a *app) exportLines(ctx context.Context, pipeline, change string, from, to time.Time, add func([]bundle.Line) error) error {
	js, err := a.connect()
	if err != nil {
		return err
	}
	sc := a.streamConfig()
	st, err := js.Stream(ctx, sc.Name)
	if err != nil {
		return err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return err
	}
	if info.State.Msgs == 0 {
		return nil
	}
	p, c := "*", "*"
	if pipeline != "" {
		p = events.EncodeToken(pipeline)
	}
	if change != "" {
		c = events.EncodeToken(change)
	}
	scan := projector.ScanConfig{Stream: sc.Name, Subjects: []string{sc.SubjectPrefix + "." + p + "." + c},
		FromSeq: info.State.FirstSeq, ToSeq: info.State.LastSeq, Logger: a.log}
	type window struct{ first, last uint64 }
	var windows map[string]*window
	if !from.IsZero() || !to.IsZero() {
		windows = map[string]*window{}
		err := projector.Scan(ctx, js, scan, func(msgs []projector.StreamMsg) error {
			for _, m := range msgs {
				e, err := events.Decode(m.Data)
				if err != nil || (!from.IsZero() && e.OccurredAt.Before(from)) || (!to.IsZero() && e.OccurredAt.After(to)) {
					continue
				}
				if w := windows[m.Subject]; w == nil {
					windows[m.Subject] = &window{m.Seq, m.Seq}
				} else {
					w.last = m.Seq
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	batches := make(chan []bundle.Line, 2)
	failed, done := make(chan struct{}), make(chan struct{})
	var addErr error
	go func() {
		defer close(done)
		for b := range batches {
			if addErr == nil {
				if addErr = add(b); addErr != nil {
					close(failed)
				}
			}
		}
	}()
	err = projector.Scan(ctx, js, scan, func(msgs []projector.StreamMsg) error {
		lines := make([]bundle.Line, 0, len(msgs))
		for _, m := range msgs {
			l := bundle.Line{Seq: m.Seq, Subject: m.Subject, Headers: m.Header, Data: m.Data}
			if windows != nil {
				w := windows[m.Subject]
				if w == nil || m.Seq > w.last {
					continue
				}
				l.Context = m.Seq < w.first
			}
			lines = append(lines, l)
		}
		select {
		case batches <- lines:
			return nil
		case <-failed:
			return errStopped
		}
	})
	close(batches)
	<-done
	if addErr != nil {
		return addErr
	}
	return err
}

func (a *app) verifyBundleCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "verify-bundle FILE",
		Short: "Check an audit bundle offline: signatures, hash chains, the manifest and the report; exit 3 with each problem",
		Long: `verify-bundle checks a bundle written by export, with no NATS and no store:
every event's signature against the bundle's trust.yaml — or --trust, which
wins: give the trust list you got another way, since a bundle's own list
is only as good as whoever handed you the bundle — each change's hash chain
from its first event, the manifest's signature by an operator key of that
list, its digests and counts (no event missing), and report.html, which is
regenerated from the events and compared byte for byte. It exits 0 when all
hold, 3 listing each problem.`,
		Example: `  auditflow verify-bundle audit.tar.gz --trust trust.yaml
  auditflow verify-bundle audit.tar.gz --json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			defer boundMemory()()
			// Only --trust (or its variable) counts here: not the embedded
			// mode's list, which judges the local stream, not a bundle.
			var list *trust.List
			source := "the bundle's trust.yaml"
			if p := a.signing.flags.Trust; p != "" && (cmd.Flags().Changed("trust") || os.Getenv("AUDITFLOW_TRUST") != "") {
				l, err := trust.LoadList(p)
				if err != nil {
					return usage("--trust: %v", err)
				}
				list, source = l, p+" (--trust; the bundle's trust.yaml is not used)"
			}
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			res, err := bundle.Check(bufio.NewReaderSize(f, 1<<20), list, "")
			if err != nil {
				return err
			}
			err = a.emit(struct {
				bundle.Result
				Trust string `json:"trust"`
			}{res, source}, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "bundle\t%s: %d events of %d changes\n", args[0], res.Events, res.Changes)
				fmt.Fprintf(w, "trust list\t%s\n", source)
				if res.Signer != "" {
					fmt.Fprintf(w, "manifest signed by\t%s\n", res.Signer)
				}
				if len(res.Problems) == 0 {
					fmt.Fprintf(w, "result\tOK: every signature, chain link, count and the report hold\n")
				}
				for _, p := range res.Problems {
					fmt.Fprintf(w, "PROBLEM\t%s\n", p)
				}
			})
			if err != nil {
				return err
			}
			if len(res.Problems) > 0 {
				return errProblems
			}
			return nil
		},
	}
}
