package supervisor_test

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/auditflow/auditflow/runner/supervisor"
)

// A command run under a supervisor: cancelling ctx, the deadlines passing,
// or this process dying stops it (on Unix; the test binary's TestMain
// called supervisor.Main, as a real main must).
func ExampleRun() {
	if !supervisor.Installed() {
		return // run the command directly instead
	}
	lease := time.Now().Add(time.Minute)
	res, err := supervisor.Run(context.Background(), supervisor.Spec{
		Args:   []string{"sh", "-c", `echo "applied under token $AUDITFLOW_LOCK_TOKEN"`},
		Env:    append(os.Environ(), "AUDITFLOW_LOCK_TOKEN=7"),
		Stdout: os.Stdout, Stderr: os.Stderr,
		Grace: 5 * time.Second,
		Deadlines: func() (time.Time, time.Time, bool) {
			return lease.Add(-10 * time.Second), lease.Add(-5 * time.Second), true
		},
	})
	fmt.Println(res.Exit(), err)
	// Output:
	// applied under token 7
	// exit status 0 <nil>
}
