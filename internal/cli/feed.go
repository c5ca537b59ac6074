package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/auditflow/auditflow/internal/natsconn"
	"github.com/auditflow/auditflow/internal/natsperm"
	"github.com/auditflow/auditflow/internal/siem"
)

// feedCommand is `auditflow feed`, which `auditflow export --format
// ndjson [--follow]` runs.
func (a *app) feedCommand() *cobra.Command {
	var cfg siem.Config
	var since sinceFlag
	var follow bool
	cmd := &cobra.Command{
		Use:   "feed",
		Short: "Write the audit stream to stdout as CloudEvents, one JSON document a line, for a SIEM (export --format ndjson)",
		Long: `feed writes the audit stream to stdout as NDJSON: each line is an event's own
CloudEvents JSON document, with what auditflow found added as extension
attributes:

  auditflowseq     the stream sequence (deduplicate on it)
  auditflowsigner  the key that signed the event, or ""
  auditflowtrust   "trusted", the trust list's problem with the event, or
                   "unchecked" (--insecure-no-trust)
  auditflowchain   "", or how the event fails to extend its change's chain

A message that does not decode is written too, as a CloudEvents document of
type io.auditflow.undecodable with its raw bytes (data_base64) and the reason
(auditflowerror). It is what 'auditflow export --format ndjson' runs.

Without --follow it writes what the stream holds when it starts and exits.
With --follow it reads from a durable consumer (--consumer, default siem)
until interrupted (SIGINT, SIGTERM), and acknowledges each batch only after its lines are written and flushed: run again, it continues after the
last line written. Delivery is at least once: after a crash between a write
and its acknowledgement the last batch is written again, so deduplicate on
auditflowseq. Give it the projectors' --trust (or --insecure-no-trust).

In the deployment run it as the siem user (deploy/nats/accounts.conf), whose
rights are the feed's: it may acknowledge only its own consumer, siem (another
--consumer needs its lines there). See docs/siem.md.`,
		Example: `  auditflow --trust trust.yaml feed --since 24h > audit.ndjson
  auditflow --trust trust.yaml feed --follow | vector --config siem.toml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if since.set() {
				cfg.Since = since.from(time.Now())
			}
			return a.runFeed(cmd.Context(), cfg, follow)
		},
	}
	cmd.Flags().StringVar(&cfg.Pipeline, "pipeline", "", "only this pipeline's events")
	cmd.Flags().StringVar(&cfg.Change, "change", "", "only this change id's events")
	cmd.Flags().Var(&since, "since", "start at events stored since a time (RFC 3339) or a duration ago (e.g. 24h); with --follow, only when the consumer is created")
	cmd.Flags().BoolVar(&follow, "follow", false, "keep writing new events from a durable consumer until interrupted; a restart continues after the last line written")
	cmd.Flags().StringVar(&cfg.Consumer, "consumer", siem.DefaultConsumer, "--follow's durable consumer (not a projector's)")
	cmd.Flags().IntVar(&cfg.BatchSize, "batch", 1000, "messages read, judged and written at once (with --follow: acknowledged at once)")
	return cmd
}

// runFeed writes the feed (see feedCommand) to stdout: what `feed` and
// `export --format ndjson` run.
func (a *app) runFeed(ctx context.Context, cfg siem.Config, follow bool) error {
	list, err := a.requiredTrustList()
	if err != nil {
		return err
	}
	cfg.Trust, cfg.Stream, cfg.Logger = list, a.streamConfig(), a.log
	// The feed is the siem role's (deploy/nats/accounts.conf), whichever
	// command runs it: its replies go to _INBOX.siem when the URL names
	// no user (a TLS certificate names it, say), not to the operator's.
	a.nats.Role = natsconn.RoleSIEM
	js, err := a.connect()
	if err != nil {
		return err
	}
	f, err := siem.New(js, cfg)
	if err != nil {
		return usageError{err}
	}
	// A missing right ends the feed at once, naming the subject (the
	// request itself would only time out, and Follow try it again).
	wctx, stop := natsperm.Watch(ctx, a.nc, natsperm.JetStream)
	defer stop()
	if follow {
		err = f.Follow(wctx, a.out)
	} else {
		err = f.Run(wctx, a.out)
	}
	if pe := natsperm.Cause(wctx); pe != nil {
		err = pe
	}
	st := f.Stats()
	a.log.Info("feed done", "lines", st.Lines, "undecodable", st.Undecodable, "untrusted", st.Untrusted,
		"outOfChain", st.OutOfChain, "lastSeq", st.LastSeq)
	if err != nil && ctx.Err() != nil {
		return nil // interrupted: what was written is acknowledged
	}
	if err != nil {
		return fmt.Errorf("feed (after %d lines, up to sequence %d): %w", st.Lines, st.LastSeq, err)
	}
	return nil
}
