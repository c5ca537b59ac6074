//go:build unix

package faulttest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/console"
	"github.com/auditflow/auditflow/internal/proctest"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/stores/sqlitestore"
)

// TestCanaryChangeSecretsNeverLeak: a failing change prints secrets in
// every way a change holds them — variables of the runner's environment
// whose names say so (DB_PASS, STRIPE_KEY, SMTP_AUTH) or that its file
// declares (secretEnv: MY_VAR, and LICENSE, a value its env: sets), a
// database URL with a password, NAME=value lines, JSON and a URL it reads
// from files and the JSON in its own script, with `env` and `set -x`.
// None of the values appears anywhere it could be kept or shown: the
// runner's output and logs; every message of every stream on the server,
// headers included; every text of every table of the SQLite store, and
// its files; the console's API and pages for the change; a projector's
// logs at debug level and its /metrics. The values were in the change's
// environment and output (its env file holds them), and the trace says
// "***" where they were.
func TestCanaryChangeSecretsNeverLeak(t *testing.T) {
	id := fmt.Sprintf("%x", time.Now().UnixNano())
	canary := map[string]string{
		"DB_PASS": "cnry-dbpass-" + id, "STRIPE_KEY": "cnry-stripe-" + id, "SMTP_AUTH": "cnry-smtp-" + id,
		"MY_VAR": "cnry-myvar-" + id, "LICENSE": "cnry-license-" + id, "DATABASE_URL": "cnry-dburl-" + id,
		"json": "cnry-json-" + id, "url": "cnry-url-" + id, "file": "cnry-file-" + id, "apikey": "cnry-apikey-" + id,
	}
	leaks := func(s string) string {
		for name, v := range canary {
			if strings.Contains(s, v) {
				return name
			}
		}
		return ""
	}
	for _, name := range []string{"DB_PASS", "STRIPE_KEY", "SMTP_AUTH", "MY_VAR"} {
		t.Setenv(name, canary[name])
	}
	// The test servers' Couchbase password is the word "password": in the
	// runner's environment it is a secret value, masked wherever it
	// appears — the JSON key below included.
	t.Setenv("AUDITFLOW_TEST_COUCHBASE_PASSWORD", "")
	t.Setenv("DATABASE_URL", "postgres://app:"+canary["DATABASE_URL"]+"@db:5432/billing")

	srv := startServer(t)
	initAuditflow(t, srv.URL)
	changes, envFile := t.TempDir(), filepath.Join(t.TempDir(), "change-env.txt")
	for name, content := range map[string]string{
		"creds.env":    "DB_PASSWORD=" + canary["file"] + "\nDB_USER=app\n",
		"mirror.txt":   "fetching https://deploy:" + canary["url"] + "@repo.example.com/app.tgz\n",
		"payload.json": `{"user":"bob","api_key":"` + canary["apikey"] + `","n":1}` + "\n",
	} {
		if err := os.WriteFile(filepath.Join(changes, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	changeFile(t, changes, "1.yaml", fmt.Sprintf(`id: 0001-leaky
env: {LICENSE: %s}
secretEnv: [MY_VAR, LICENSE]
apply: |
  env > %s
  env
  cat creds.env mirror.txt payload.json
  echo "license $LICENSE, my var $MY_VAR"
  set -x
  echo "$DB_PASS $STRIPE_KEY $SMTP_AUTH"
  echo '{"password": "%s"}'
  exit 1
`, canary["LICENSE"], envFile, canary["json"]))

	r := runner(t, srv.URL, changes, "canary", "r-canary")
	if code := r.wait(t, 60*time.Second); code != 3 {
		t.Fatalf("runner: exit %d, want 3 (change failed):\n%s", code, r.out.String())
	}
	out := r.out.String()
	if name := leaks(out); name != "" {
		t.Errorf("the runner's output and logs show %s:\n%s", name, out)
	}
	for _, want := range []string{"DB_PASS=***", "STRIPE_KEY=***", "SMTP_AUTH=***", "MY_VAR=***", "LICENSE=***",
		"DATABASE_URL=postgres://app:***@db:5432/billing", "DB_PASSWORD=***", "https://deploy:***@repo.example.com",
		`"api_key":"***"`, "license ***, my var ***", `{"password": "***"}`} {
		if !strings.Contains(out, want) {
			t.Errorf("the runner's output lacks %q:\n%s", want, out)
		}
	}
	// The change had every value, and printed them.
	b, err := os.ReadFile(envFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"DB_PASS", "STRIPE_KEY", "SMTP_AUTH", "MY_VAR", "LICENSE", "DATABASE_URL"} {
		if !strings.Contains(string(b), canary[name]) {
			t.Fatalf("the change's environment lacks %s", name)
		}
	}

	// Every message of every stream, headers included.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var messages int
	for name, err := range streamNames(ctx, srv.JS) {
		if err != nil {
			t.Fatal(err)
		}
		s, err := srv.JS.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		state := s.CachedInfo().State
		for seq := max(state.FirstSeq, 1); seq <= state.LastSeq; seq++ {
			m, err := s.GetMsg(ctx, seq)
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			messages++
			if name := leaks(string(m.Data) + fmt.Sprint(m.Header)); name != "" {
				t.Errorf("stream %s seq %d holds %s: %s", s.CachedInfo().Config.Name, seq, name, m.Data)
			}
		}
	}

	// A projector: its logs at debug level, its metrics, its store.
	var logs proctest.Buffer
	reg := prometheus.NewRegistry()
	db := filepath.Join(t.TempDir(), "audit.db")
	st, err := sqlitestore.Open(ctx, db, sqlitestore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	p, err := projector.New(ctx, srv.JS, st, projector.Config{StoreName: "sqlite", Registerer: reg,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	pctx, pcancel := context.WithCancel(ctx)
	pdone := make(chan struct{})
	go func() { defer close(pdone); _ = p.Run(pctx) }()
	if err := p.WaitCaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
	rows, err := st.History(ctx, stores.HistoryQuery{Pipeline: "canary", ChangeID: "0001-leaky", State: events.StateFailed})
	if err != nil || len(rows) != 1 || !strings.Contains(rows[0].ErrorTrace, "DB_PASS=***") {
		t.Fatalf("the failed execution's row: %+v %v", rows, err)
	}
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), "auditflow_projector_") {
		t.Fatalf("/metrics: %d\n%s", rec.Code, rec.Body.String())
	}
	if name := leaks(rec.Body.String()); name != "" {
		t.Errorf("/metrics shows %s", name)
	}

	// The console on the store: the API and the pages for the change.
	con, err := console.New(console.Config{Store: st, StoreKind: "sqlite", NC: srv.JS.Conn(), JS: srv.JS, NoAuth: true})
	if err != nil {
		t.Fatal(err)
	}
	web := httptest.NewServer(con.Handler())
	defer web.Close()
	for _, path := range []string{"/api/v1/changes", "/api/v1/changes/canary/0001-leaky", "/api/v1/history?pipeline=canary",
		"/api/v1/issues", "/api/v1/deadletters", "/", "/changes/canary/0001-leaky", "/issues"} {
		resp, err := http.Get(web.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK || path != "/api/v1/deadletters" && !strings.Contains(string(body), "0001-leaky") {
			t.Errorf("console %s: %d, or it does not show the change:\n%.500s", path, resp.StatusCode, body)
		}
		if name := leaks(string(body)); name != "" {
			t.Errorf("console %s shows %s", path, name)
		}
	}
	pcancel()
	<-pdone
	if name := leaks(logs.String()); name != "" {
		t.Errorf("the projector's logs show %s:\n%s", name, logs.String())
	}

	// Every text of every table, read raw, and the store's files.
	raw, err := sql.Open("sqlite", db)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	cells := dumpTables(t, raw)
	if !strings.Contains(cells, "DB_PASS=***") {
		t.Fatalf("the raw dump lacks the masked trace (%d bytes)", len(cells))
	}
	if name := leaks(cells); name != "" {
		t.Errorf("the SQLite store holds %s", name)
	}
	_ = raw.Close()
	_ = st.Close()
	for _, f := range []string{db, db + "-wal"} {
		if b, err := os.ReadFile(f); err == nil && leaks(string(b)) != "" {
			t.Errorf("%s holds %s", filepath.Base(f), leaks(string(b)))
		}
	}
	t.Logf("checked %d stream messages, %d bytes of store cells", messages, len(cells))
}

// dumpTables returns every cell of every table of a SQLite database as
// text, whatever its column's type.
func dumpTables(t *testing.T, db *sql.DB) string {
	t.Helper()
	names, err := db.Query(`SELECT name FROM sqlite_master WHERE type = 'table'`)
	if err != nil {
		t.Fatal(err)
	}
	var tables []string
	for names.Next() {
		var n string
		if err := names.Scan(&n); err != nil {
			t.Fatal(err)
		}
		tables = append(tables, n)
	}
	if err := names.Close(); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, table := range tables {
		rows, err := db.Query(`SELECT * FROM "` + strings.ReplaceAll(table, `"`, `""`) + `"`)
		if err != nil {
			t.Fatal(err)
		}
		cols, err := rows.Columns()
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			for _, v := range vals {
				if bs, ok := v.([]byte); ok {
					v = string(bs)
				}
				fmt.Fprintf(&b, "%s\t%v\n", table, v)
			}
		}
		if err := rows.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return b.String()
}
