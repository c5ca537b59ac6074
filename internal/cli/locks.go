package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/auditflow/auditflow/lock"
)

// locker opens the lock bucket (--lock-bucket), adopting its lease.
func (a *app) locker(ctx context.Context) (*lock.Locker, error) {
	js, err := a.connect()
	if err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	return lock.New(ctx, js, lock.Config{Bucket: a.lockBucket, Replicas: a.replicas, Owner: fmt.Sprintf("auditflow-cli@%s:%d", host, os.Getpid()), Logger: a.log})
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
		Short: "Remove a dead holder's pipeline lock (--force), only at the revision seen",
		Long: `release removes the lock now instead of waiting for its lease to expire. Use it
only when the holder is known to be dead: a live holder stops its change when
it notices (at its next refresh), but until then a new runner could start
changes beside it.

It removes only the lock at --revision, the REVISION that "lock list" showed
(default: the revision it reads now). A live holder refreshes every third of
its lease, which changes the revision, and a new holder has a new one: in
both cases nothing is removed and the current holder is named.`,
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
			seen, err := l.Holder(c.Context(), pipeline)
			if errors.Is(err, lock.ErrNotHeld) {
				return fmt.Errorf("%w: %w", errNotFound, err)
			}
			if err != nil {
				return err
			}
			if revision != 0 && revision != seen.Revision {
				seen.Revision = revision // the operator's: ForceRelease refuses and names the holder
			}
			if err := l.ForceRelease(c.Context(), pipeline, seen.Revision); err != nil {
				if errors.Is(err, lock.ErrNotHeld) {
					return fmt.Errorf("%w: %w", errNotFound, err)
				}
				if errors.Is(err, lock.ErrChanged) {
					return fmt.Errorf("%w: %w", errProblems, err)
				}
				return err
			}
			return a.emit(map[string]any{"pipeline": pipeline, "released": true, "owner": seen.Owner, "token": seen.Token, "revision": seen.Revision}, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "released the lock of pipeline %s (holder %s, token %d, revision %d)\n", pipeline, seen.Owner, seen.Token, seen.Revision)
			})
		},
	}
	release.Flags().StringVarP(&pipeline, "pipeline", "p", "", "the pipeline whose lock to release (required)")
	release.Flags().BoolVar(&force, "force", false, "confirm: the holder is dead")
	release.Flags().Uint64Var(&revision, "revision", 0, "remove the lock only at this revision (from lock list); default: the one read now")
	cmd.AddCommand(list, release)
	return cmd
}
