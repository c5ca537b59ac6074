package projectorcmd_test

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/embedded"
	"github.com/auditflow/auditflow/internal/projectorcmd"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/stores/sqlitestore"
)

func TestProjectsIntoSQLiteAndStopsCleanly(t *testing.T) {
	srv, err := embedded.Start(embedded.Config{DataDir: t.TempDir(), Port: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	nc, err := srv.Connect("test")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	prod, err := producer.New(ctx, js, producer.Config{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		e := events.New(events.ExecutionStarted, "billing", string(rune('a'+i)))
		e.ExecutionID = "x"
		if _, err := prod.Publish(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	db := filepath.Join(t.TempDir(), "audit.db")
	rctx, cancel := context.WithCancel(ctx)
	var stderr bytes.Buffer
	done := make(chan int)
	go func() {
		done <- projectorcmd.Main(rctx, []string{"--nats-url", srv.ClientURL(), "--store", "sqlite", "--sqlite-path", db, "--log-format", "json"}, &stderr)
	}()
	st, err := sqlitestore.Open(ctx, db, sqlitestore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	deadline := time.Now().Add(15 * time.Second)
	for {
		rows, _ := st.History(ctx, stores.HistoryQuery{})
		if len(rows) == 10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("projected %d of 10 events\n%s", len(rows), stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if code := <-done; code != projectorcmd.ExitOK {
		t.Fatalf("exit %d after cancellation\n%s", code, stderr.String())
	}
	if !strings.Contains(stderr.String(), `"msg":"projector stopped"`) {
		t.Fatalf("no clean stop logged:\n%s", stderr.String())
	}
}

func TestUsageErrors(t *testing.T) {
	for name, args := range map[string][]string{
		"unknown store":  {"--store", "oracle"},
		"bad log format": {"--log-format", "xml"},
		"bad table name": {"--sqlite-path", filepath.Join(t.TempDir(), "x.db"), "--sqlite-issues-table", "drop table"},
		"stray argument": {"now"},
	} {
		var stderr bytes.Buffer
		if code := projectorcmd.Main(context.Background(), args, &stderr); code != projectorcmd.ExitUsage {
			t.Errorf("%s: exit %d, want %d\n%s", name, code, projectorcmd.ExitUsage, stderr.String())
		}
	}
}
