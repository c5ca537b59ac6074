package console_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/inspect"
	"github.com/auditflow/auditflow/runner"
)

type changesResp struct {
	Changes []struct {
		Pipeline, ChangeID, State, Author, TargetSystem string
		Seq                                             uint64
	} `json:"changes"`
	NextBeforeSeq uint64 `json:"nextBeforeSeq"`
}

type historyResp struct {
	Events []struct {
		Seq                                           uint64
		Pipeline, ChangeID, State, Author, ErrorTrace string
		TargetSystem                                  string
		Mark                                          string
	} `json:"events"`
	NextBeforeSeq uint64 `json:"nextBeforeSeq"`
}

func decode[T any](t *testing.T, b []byte) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	return v
}

func TestAPIFilters(t *testing.T) {
	e := start(t)
	e.seed()
	for _, tc := range []struct {
		query string
		want  []string // pipeline/change, newest first
	}{
		{"", []string{"shipping/0001-carriers", "billing/0003-backfill", "billing/0002-add-index", "billing/0001-create-customers"}},
		{"?pipeline=billing", []string{"billing/0003-backfill", "billing/0002-add-index", "billing/0001-create-customers"}},
		{"?state=failed", []string{"billing/0003-backfill"}},
		{"?status=OPEN", []string{"billing/0003-backfill"}},
		{"?author=alice", []string{"billing/0003-backfill", "billing/0001-create-customers"}},
		{"?targetSystem=orders-db", []string{"billing/0002-add-index", "billing/0001-create-customers"}},
		{"?author=alice&state=APPLIED", []string{"billing/0001-create-customers"}},
		{"?since=2000-01-01T00:00:00Z&until=2000-01-02T00:00:00Z", nil},
		// The CLI's syntax: a duration back from now, or an RFC 3339 time.
		{"?since=24h", []string{"shipping/0001-carriers", "billing/0003-backfill", "billing/0002-add-index", "billing/0001-create-customers"}},
		{"?since=2000-01-01T00:00:00Z", []string{"shipping/0001-carriers", "billing/0003-backfill", "billing/0002-add-index", "billing/0001-create-customers"}},
		{"?until=24h", nil},
		{"?since=48h&until=24h", nil},
		{"?pipeline=nope", nil},
	} {
		code, _, body := e.get("/api/v1/changes"+tc.query, e.readKey)
		if code != http.StatusOK {
			t.Fatalf("changes%s: %d %s", tc.query, code, body)
		}
		var got []string
		for _, c := range decode[changesResp](t, body).Changes {
			got = append(got, c.Pipeline+"/"+c.ChangeID)
		}
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("changes%s = %v, want %v", tc.query, got, tc.want)
		}
	}
	// History filters: author and target system are applied by the
	// console, state and pipeline by the store.
	code, _, body := e.get("/api/v1/history?author=alice&targetSystem=warehouse", e.readKey)
	if code != http.StatusOK {
		t.Fatalf("history: %d %s", code, body)
	}
	h := decode[historyResp](t, body)
	if len(h.Events) != 2 || h.Events[0].State != "FAILED" || h.Events[1].State != "STARTED" {
		t.Fatalf("history of alice on warehouse = %+v, want FAILED then STARTED", h.Events)
	}
	if !strings.Contains(h.Events[0].ErrorTrace, "deadlock detected") {
		t.Errorf("FAILED event has trace %q", h.Events[0].ErrorTrace)
	}
	for _, q := range []string{"/stats?since=24h", "/stats?since=2000-01-01T00:00:00Z", "/history?since=90m"} {
		if code, _, body := e.get("/api/v1"+q, e.readKey); code != http.StatusOK {
			t.Errorf("%s = %d %s, want 200", q, code, body)
		}
	}
	for _, q := range []string{"?state=BOGUS", "?limit=0", "?limit=5000", "?beforeSeq=x", "?since=yesterday", "?since=-5m"} {
		code, _, body := e.get("/api/v1/history"+q, e.readKey)
		if code != http.StatusBadRequest || !strings.Contains(string(body), `"bad_request"`) {
			t.Errorf("history%s = %d %s, want 400 bad_request", q, code, body)
		}
	}
}

func TestAPIHistoryPaging(t *testing.T) {
	e := start(t)
	e.seed()
	// Every event once, newest first, whatever the page size.
	_, _, body := e.get("/api/v1/history?limit=1000", e.readKey)
	all := decode[historyResp](t, body).Events
	if len(all) != 8 { // 4 changes: STARTED + outcome each
		t.Fatalf("history holds %d events, want 8", len(all))
	}
	for _, size := range []int{1, 3, 7} {
		var seqs []uint64
		cursor := ""
		for page := 0; ; page++ {
			if page > 10 {
				t.Fatal("paging does not end")
			}
			_, _, body := e.get(fmt.Sprintf("/api/v1/history?limit=%d%s", size, cursor), e.readKey)
			h := decode[historyResp](t, body)
			for _, ev := range h.Events {
				seqs = append(seqs, ev.Seq)
			}
			if h.NextBeforeSeq == 0 {
				break
			}
			cursor = fmt.Sprintf("&beforeSeq=%d", h.NextBeforeSeq)
		}
		if len(seqs) != len(all) {
			t.Fatalf("pages of %d gave %d events, want %d", size, len(seqs), len(all))
		}
		for i := range seqs {
			if seqs[i] != all[i].Seq {
				t.Fatalf("pages of %d: event %d is seq %d, want %d", size, i, seqs[i], all[i].Seq)
			}
		}
	}
}

func TestAPIIssueGuidanceIsTheCLIs(t *testing.T) {
	e := start(t)
	e.seed()
	code, _, body := e.get("/api/v1/issues", e.readKey)
	if code != http.StatusOK {
		t.Fatalf("issues: %d %s", code, body)
	}
	type issue struct {
		inspect.IssueView
		Guidance    string   `json:"guidance"`
		FixCommands []string `json:"fixCommands"`
	}
	out := decode[struct{ Issues []issue }](t, body)
	if len(out.Issues) != 1 || out.Issues[0].ChangeID != "0003-backfill" {
		t.Fatalf("issues = %s", body)
	}
	i := out.Issues[0]
	if want := inspect.Guide(i.IssueView); i.Guidance != want {
		t.Errorf("guidance =\n%s\nwant issue get --guidance's:\n%s", i.Guidance, want)
	}
	want := `auditflow issue fix -p billing -c 0003-backfill -r applied --reason "..."`
	if len(i.FixCommands) != 2 || i.FixCommands[0] != want || !strings.Contains(i.Guidance, want) {
		t.Errorf("fix commands = %q, want %q first", i.FixCommands, want)
	}
	code, _, body = e.get("/api/v1/changes/billing/0003-backfill", e.readKey)
	if code != http.StatusOK || !strings.Contains(string(body), "deadlock detected") {
		t.Fatalf("change: %d %s", code, body)
	}
	code, _, body = e.get("/api/v1/changes/billing/nope", e.readKey)
	if code != http.StatusNotFound || !strings.Contains(string(body), `"not_found"`) {
		t.Errorf("missing change: %d %s", code, body)
	}
}

func TestAPIAccess(t *testing.T) {
	e := start(t)
	for _, tc := range []struct {
		path, key string
		code      int
		errCode   string
	}{
		{"/api/v1/changes", "", 401, "unauthorized"},
		{"/api/v1/changes", "afc_not-a-key", 401, "unauthorized"},
		{"/api/v1/changes", "statskey", 403, "forbidden"},
		{"/api/v1/history", "statskey", 403, "forbidden"},
		{"/api/v1/events", "statskey", 403, "forbidden"},
		{"/api/v1/stats", "statskey", 200, ""},
		{"/api/v1/stats", "readkey", 200, ""},
		{"/api/v1/openapi.json", "", 200, ""},
		{"/api/v1/nope", "readkey", 404, "not_found"},
	} {
		key := map[string]string{"statskey": e.statsKey, "readkey": e.readKey}[tc.key]
		if key == "" {
			key = tc.key
		}
		code, h, body := e.get(tc.path, key)
		if code != tc.code {
			t.Errorf("%s with %q: %d %s, want %d", tc.path, tc.key, code, body, tc.code)
			continue
		}
		if tc.errCode != "" {
			var ae struct{ Error, Message string }
			if err := json.Unmarshal(body, &ae); err != nil || ae.Error != tc.errCode || ae.Message == "" {
				t.Errorf("%s: body %s, want error %q with a message", tc.path, body, tc.errCode)
			}
			if strings.Contains(string(body), e.readKey) || strings.Contains(string(body), e.statsKey) {
				t.Errorf("%s: the body shows a key", tc.path)
			}
		}
		if code == 401 && !strings.HasPrefix(h.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("%s: 401 without WWW-Authenticate: Bearer", tc.path)
		}
		for name, want := range map[string]string{"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY"} {
			if h.Get(name) != want {
				t.Errorf("%s: %s = %q, want %q", tc.path, name, h.Get(name), want)
			}
		}
		if csp := h.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe-inline") || !strings.Contains(csp, "frame-ancestors 'none'") {
			t.Errorf("%s: CSP %q", tc.path, csp)
		}
	}
	// A page without a session sends the browser to sign in.
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	res, err := client.Get(e.url + "/issues")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != "/login?next=%2Fissues" {
		t.Errorf("page without session: %d to %q", res.StatusCode, res.Header.Get("Location"))
	}
}

func TestAPIIssuesPaging(t *testing.T) {
	e := start(t)
	e.seed()
	if err := e.run("payments",
		runner.Change{ID: "0001-a", Order: "1", Apply: ok},
		runner.Change{ID: "0002-b", Order: "2", Recovery: events.AlwaysRetry, Apply: failing("timeout")},
	); err == nil {
		t.Fatal("payments run did not fail")
	}
	if err := e.run("ledger", runner.Change{ID: "0001-c", Order: "1", Apply: failing("disk full")}); err == nil {
		t.Fatal("ledger run did not fail")
	}
	var got []string
	cursor := ""
	for page := 0; page < 10; page++ {
		code, _, body := e.get("/api/v1/issues?limit=1"+cursor, e.readKey)
		if code != http.StatusOK {
			t.Fatalf("issues: %d %s", code, body)
		}
		out := decode[struct {
			Issues []struct {
				Pipeline, ChangeID string
				NeedsOperator      bool
			}
			NextBeforeSeq uint64
		}](t, body)
		for _, i := range out.Issues {
			got = append(got, i.Pipeline+"/"+i.ChangeID)
		}
		if out.NextBeforeSeq == 0 {
			break
		}
		cursor = fmt.Sprintf("&beforeSeq=%d", out.NextBeforeSeq)
	}
	// Newest first; 0002-b retries (ALWAYS_RETRY) but is still failed
	// until a run retries it, so it needs an operator's eye too.
	want := []string{"ledger/0001-c", "payments/0002-b", "billing/0003-backfill"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("issues paged one at a time = %v, want %v", got, want)
	}
}

// TestUnsignedRowsAreMarked: the seeded runs are unsigned (no trust list
// judged them): the API marks every event UNSIGNED and a change's timeline
// shows the mark beside each state.
func TestUnsignedRowsAreMarked(t *testing.T) {
	e := start(t)
	e.seed()
	code, _, body := e.get("/api/v1/history?pipeline=billing", e.readKey)
	if code != http.StatusOK {
		t.Fatalf("history: %d %s", code, body)
	}
	h := decode[historyResp](t, body)
	if len(h.Events) == 0 {
		t.Fatal("no events")
	}
	for _, ev := range h.Events {
		if ev.Mark != "UNSIGNED" {
			t.Fatalf("event %d %s %s: mark %q, want UNSIGNED", ev.Seq, ev.ChangeID, ev.State, ev.Mark)
		}
	}
	code, _, page := e.get("/changes/billing/0003-backfill", e.readKey)
	if code != http.StatusOK {
		t.Fatalf("change page: %d %s", code, page)
	}
	if n := strings.Count(string(page), `class="mark mark-unsigned"`); n == 0 {
		t.Fatalf("the timeline shows no UNSIGNED mark:\n%s", page)
	}
}
