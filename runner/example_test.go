package runner_test

import (
	"context"
	"fmt"
	"os"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/internal/embedded"
	"github.com/auditflow/auditflow/lock"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/runner"
)

// The whole runner API against an in-process JetStream server: ensure the
// stream, open the lock bucket, run two changes, run them again.
func Example() {
	dir, _ := os.MkdirTemp("", "auditflow-example")
	defer os.RemoveAll(dir)
	srv, err := embedded.Start(embedded.Config{DataDir: dir})
	if err != nil {
		panic(err)
	}
	defer srv.Close()
	nc, _ := srv.Connect("example")
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()

	prod, err := producer.New(ctx, js, producer.Config{CreateStream: true})
	if err != nil {
		panic(err)
	}
	locker, err := lock.New(ctx, js, lock.Config{CreateBucket: true})
	if err != nil {
		panic(err)
	}
	r, _ := runner.New(prod, locker, runner.Config{Pipeline: "billing"})
	changes := []runner.Change{
		{ID: "0001-create-invoices", Order: "0001", Author: "alice", Apply: func(context.Context) error { return nil }},
		{ID: "0002-index-invoices", Order: "0002", Author: "bob", Apply: func(context.Context) error { return nil }},
	}
	for range 2 {
		rep, err := r.Run(ctx, changes)
		if err != nil {
			panic(err)
		}
		for _, res := range rep.Results {
			fmt.Println(res.ChangeID, res.Outcome)
		}
	}
	// Output:
	// 0001-create-invoices APPLIED
	// 0002-index-invoices APPLIED
	// 0001-create-invoices SKIPPED
	// 0002-index-invoices SKIPPED
}
