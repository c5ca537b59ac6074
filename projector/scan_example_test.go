package projector_test

import (
	"context"
	"fmt"
	"os"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/embedded"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
)

// Reading the audit stream up to its last event as it is now, as replay
// and verify do: Scan rides out a cluster's fail-overs and deletes its
// consumer when it is done.
func ExampleScan() {
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
	for _, c := range []string{"0001-schema", "0002-index", "0003-backfill"} {
		e := events.New(events.ExecutionStarted, "billing", c)
		e.ExecutionID = "exec-1"
		if _, err := prod.Publish(ctx, e); err != nil {
			panic(err)
		}
	}

	stream, err := projector.LookupStream(ctx, js, producer.DefaultStreamName, 0, nil)
	if err != nil {
		panic(err)
	}
	cfg := projector.ScanConfig{Stream: producer.DefaultStreamName, Subjects: []string{events.DefaultSubjectPrefix + ".>"},
		ToSeq: stream.CachedInfo().State.LastSeq}
	err = projector.Scan(ctx, js, cfg, func(msgs []projector.StreamMsg) error {
		for _, m := range msgs {
			fmt.Println(m.Seq, m.Subject)
		}
		return nil
	})
	if err != nil {
		panic(err)
	}
	// Output:
	// 1 audit.exec.billing.0001-schema
	// 2 audit.exec.billing.0002-index
	// 3 audit.exec.billing.0003-backfill
}
