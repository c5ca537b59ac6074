package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/auditflow/auditflow/internal/natsconn"
	"github.com/auditflow/auditflow/lock"
)

// locker opens the lock bucket (--lock-bucket), adopting its lease. With
// --signing-key its releases (issue fix takes the lock) are signed; with
// --trust it believes only signed releases (see lock.Config.Trust).
func (a *app) locker(ctx context.Context) (*lock.Locker, error) {
	signer, list, err := a.loadSigning()
	if err != nil {
		return nil, err
	}
	js, err := a.connect()
	if err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	owner := fmt.Sprintf("auditflow-cli@%s:%d", host, os.Getpid())
	if u := natsconn.Env("USER", ""); u != "" {
		owner = fmt.Sprintf("auditflow-cli %s@%s:%d", u, host, os.Getpid())
	}
	return lock.New(ctx, js, lock.Config{Bucket: a.lockBucket, Replicas: a.replicas, Owner: owner, Signer: signer, Trust: list, Logger: a.log})
}

func (a *app) lockCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "lock", Short: "Pipeline locks: who holds them, and clearing a dead holder's"}
	locker := func(c *cobra.Command) (*lock.Locker, error) { return a.locker(c.Context()) }
	list := &cobra.Command{
		Use:   "list",
		Short: "Locks held now, with holder, fencing token and expiry",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			l, err := locker(c)
			if err != nil {
				return err
			}
			infos, err := l.List(c.Context())
			if err != nil {
				return err
			}
			return a.emit(infos, func(w *tabwriter.Writer) {
				if len(infos) == 0 {
					fmt.Fprintln(w, "no locks held")
					return
				}
				fmt.Fprintln(w, "PIPELINE\tHOLDER\tTOKEN\tREVISION\tACQUIRED (UTC)\tEXPIRES IN")
				for _, i := range infos {
					fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%s\t%s\n", i.Name, i.Owner, i.Token, i.Revision, i.AcquiredAt.UTC().Format(time.DateTime),
						time.Until(i.ExpiresAt).Round(time.Second))
				}
			})
		},
	}
	var pipeline string
	var force bool
	var revision uint64
	release := &cobra.Command{
		Use:   "release",
		Short: "Remove a pipeline lock whose holder does not refresh it (--force), or at the revision seen",
		Long: `release removes a pipeline lock, for a holder that is dead or must be stopped.
It never hands the lock over early: a holder cut off from NATS may still act
until its lease runs out, so the next runner takes the lock but starts only
once a lease has passed since the removal. A live holder that is removed stops
its change at its next refresh.

Without --revision, it watches the lock for a refresh interval (a third of
the lease, and a little more): a live holder refreshes it in that time, and
is then not removed — release names it (owner, token, revision) and exits 5.
A holder that does not refresh is removed at the revision watched.

With --revision, it removes only the lock at that revision, the REVISION that
"lock list" showed, at once: a live holder refreshes every third of its lease,
which changes the revision, and a new holder has a new one; in both cases
nothing is removed, the current holder is named, and release exits 5.

The removal records who released it (this command, user and host), which the
removed holder and the next one report.

Exit codes: 0 released, 1 error, 2 bad flags, 4 the lock is not held,
5 refused (the holder is alive, or the lock changed since --revision): nothing
was removed.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if pipeline == "" {
				return usage("--pipeline is required")
			}
			if !force {
				return usage("releasing another holder's lock needs --force (see --help)")
			}
			l, err := locker(c)
			if err != nil {
				return err
			}
			var seen lock.Info
			if revision == 0 {
				fmt.Fprintf(a.errOut, "auditflow: watching the lock of %s for %s: a holder that refreshes it is alive and is not removed\n",
					pipeline, l.IdleWatch().Round(time.Millisecond))
				seen, err = l.ForceReleaseIdle(c.Context(), pipeline)
			} else {
				if seen, err = l.Holder(c.Context(), pipeline); err == nil {
					if revision != seen.Revision {
						seen.Revision = revision // the operator's: ForceRelease refuses and names the holder
					}
					err = l.ForceRelease(c.Context(), pipeline, seen.Revision)
				}
			}
			switch {
			case errors.Is(err, lock.ErrNotHeld):
				return fmt.Errorf("%w: %w", errNotFound, err)
			case errors.Is(err, lock.ErrChanged):
				return fmt.Errorf("%w: %w", errRefused, err)
			case err != nil:
				return err
			}
			after := time.Now().Add(l.Lease()).UTC()
			return a.emit(map[string]any{"pipeline": pipeline, "released": true, "owner": seen.Owner, "token": seen.Token, "revision": seen.Revision,
				"nextHolderStartsAfter": after}, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "released the lock of pipeline %s (holder %s, token %d, revision %d)\n", pipeline, seen.Owner, seen.Token, seen.Revision)
				fmt.Fprintf(w, "the next runner takes it now but starts once the released holder's lease has run out: about %s (UTC), a lease (%s) from now\n",
					after.Format(time.DateTime), l.Lease())
			})
		},
	}
	release.Flags().StringVarP(&pipeline, "pipeline", "p", "", "the pipeline whose lock to release (required)")
	release.Flags().BoolVar(&force, "force", false, "confirm: remove another holder's lock")
	release.Flags().Uint64Var(&revision, "revision", 0, "remove the lock only at this revision (from lock list), at once; default: the one read now, if its holder does not refresh it while watched")
	cmd.AddCommand(list, release)
	return cmd
}
