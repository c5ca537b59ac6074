package cli

import (
	"errors"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/auditflow/auditflow/lock"
)

func (a *app) lockCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "lock", Short: "Pipeline locks: who holds them, and clearing a dead holder's"}
	var bucket string
	cmd.PersistentFlags().StringVar(&bucket, "lock-bucket", lock.DefaultBucket, "the lock KV bucket")
	locker := func(c *cobra.Command) (*lock.Locker, error) {
		js, err := a.connect()
		if err != nil {
			return nil, err
		}
		return lock.New(c.Context(), js, lock.Config{Bucket: bucket, Replicas: a.replicas, Owner: "auditflow-cli", Logger: a.log})
	}
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
				fmt.Fprintln(w, "PIPELINE\tHOLDER\tTOKEN\tACQUIRED (UTC)\tEXPIRES IN")
				for _, i := range infos {
					fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\n", i.Name, i.Owner, i.Token, i.AcquiredAt.UTC().Format(time.DateTime),
						time.Until(i.ExpiresAt).Round(time.Second))
				}
			})
		},
	}
	var pipeline string
	var force bool
	release := &cobra.Command{
		Use:   "release",
		Short: "Remove a pipeline's lock whoever holds it (--force): for a holder known to be dead",
		Long: `release removes the lock now instead of waiting for its lease to expire. Use it
only when the holder is known to be dead: a live holder notices at its next
refresh and starts no further change, but the change it is running continues,
and a new runner could start the next one meanwhile.`,
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
			if err := l.ForceRelease(c.Context(), pipeline); err != nil {
				if errors.Is(err, lock.ErrNotHeld) {
					return fmt.Errorf("%w: %w", errNotFound, err)
				}
				return err
			}
			return a.emit(map[string]any{"pipeline": pipeline, "released": true}, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "released the lock of pipeline %s\n", pipeline)
			})
		},
	}
	release.Flags().StringVarP(&pipeline, "pipeline", "p", "", "the pipeline whose lock to release (required)")
	release.Flags().BoolVar(&force, "force", false, "confirm: the holder is dead")
	cmd.AddCommand(list, release)
	return cmd
}
