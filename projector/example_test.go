package projector_test

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/embedded"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/stores/sqlitestore"
)

// A projector with Prometheus metrics and health checks, and a subscriber
// watching the AuditWrites it publishes, against an in-process JetStream
// server and SQLite.
func Example_observability() {
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
	store, err := sqlitestore.Open(ctx, filepath.Join(dir, "audit.db"), sqlitestore.Config{})
	if err != nil {
		panic(err)
	}
	defer store.Close()

	reg := prometheus.NewRegistry() // the caller's registry, never the global one
	p, err := projector.New(ctx, js, store, projector.Config{CreateStreams: true, StoreName: "sqlite", Registerer: reg})
	if err != nil {
		panic(err)
	}
	web := httptest.NewServer(p.Handler(reg)) // a command serves it on its --metrics-addr
	defer web.Close()
	writes, err := projector.NewWriteSubscription(ctx, nc, "", "*") // live once it returns
	if err != nil {
		panic(err)
	}

	prod, err := producer.New(ctx, js, producer.Config{CreateStream: true})
	if err != nil {
		panic(err)
	}
	e := events.New(events.ExecutionStarted, "billing", "0001-create-invoices")
	e.ExecutionID = events.NewID()
	if _, err := prod.Publish(ctx, e); err != nil {
		panic(err)
	}

	rctx, cancel := context.WithCancel(ctx)
	seen := make(chan projector.AuditWrite, 16)
	var wg sync.WaitGroup
	wg.Go(func() { _ = p.Run(rctx) })
	wg.Go(func() { _ = writes.Run(rctx, func(w projector.AuditWrite) { seen <- w }) })
	w := <-seen
	fmt.Printf("AuditWrite: %d event into %s, error %q\n", w.Count, w.Store, w.Error)

	resp, err := http.Get(web.URL + "/readyz")
	if err != nil {
		panic(err)
	}
	resp.Body.Close()
	fmt.Println("/readyz:", resp.Status)
	resp, err = http.Get(web.URL + "/metrics")
	if err != nil {
		panic(err)
	}
	for sc := bufio.NewScanner(resp.Body); sc.Scan(); {
		if strings.HasPrefix(sc.Text(), "auditflow_projector_events_applied_total") {
			fmt.Println(sc.Text())
		}
	}
	resp.Body.Close()
	cancel()
	wg.Wait()
	// Output:
	// AuditWrite: 1 event into sqlite, error ""
	// /readyz: 200 OK
	// auditflow_projector_events_applied_total{consumer="projector-sqlite",store="sqlite"} 1
}
