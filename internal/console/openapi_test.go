package console_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/runner"
	"github.com/auditflow/auditflow/verify"
)

func init() {
	// The live endpoint's body is a text stream: validate it as text (its
	// events' JSON is checked against the Event schema separately).
	openapi3filter.RegisterBodyDecoder("text/event-stream", openapi3filter.PlainBodyDecoder)
}

// loadDoc fetches the served OpenAPI document and checks it is valid.
func loadDoc(t *testing.T, e *env) (*openapi3.T, routers.Router) {
	t.Helper()
	code, _, body := e.get("/api/v1/openapi.json", "")
	if code != http.StatusOK {
		t.Fatalf("openapi.json: %d", code)
	}
	doc, err := openapi3.NewLoader().LoadFromData(body)
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("the OpenAPI document is not valid: %v", err)
	}
	router, err := legacy.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	return doc, router
}

// conforms checks a live response against the document: the request is
// one it describes, and the status and body are what it says.
func conforms(t *testing.T, router routers.Router, req *http.Request, status int, h http.Header, body []byte) string {
	t.Helper()
	route, params, err := router.FindRoute(req)
	if err != nil {
		t.Errorf("%s: not in the OpenAPI document: %v", req.URL, err)
		return ""
	}
	opts := &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc, IncludeResponseStatus: true, MultiError: true}
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route, Options: opts}
	ctx := context.Background()
	if status < 400 { // the error cases send bad requests on purpose
		if err := openapi3filter.ValidateRequest(ctx, in); err != nil {
			t.Errorf("%s: request does not conform: %v", req.URL, err)
		}
	}
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: status, Header: h, Options: opts}
	out.SetBodyBytes(body)
	if err := openapi3filter.ValidateResponse(ctx, out); err != nil {
		t.Errorf("%s: %d response does not conform: %v\n%s", req.URL, status, err, body)
	}
	return route.Path
}

func TestOpenAPIConformanceOfEveryEndpoint(t *testing.T) {
	e := start(t)
	e.seed()
	ctx := context.Background()
	// A dead letter: garbage on a change's subject.
	sc := producer.StreamConfig{}
	_ = sc.Validate()
	if _, err := e.nats.JS.Publish(ctx, events.Subject(sc.SubjectPrefix, "billing", "0009-garbage"), []byte("not an event")); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := e.proj.WaitCaughtUp(wctx); err != nil {
		t.Fatal(err)
	}
	// A held lock.
	if _, err := e.locker.TryAcquire(ctx, "deploys"); err != nil {
		t.Fatal(err)
	}
	doc, router := loadDoc(t, e)

	covered := map[string]bool{}
	for _, tc := range []struct {
		path, key string
		code      int
	}{
		{"/api/v1/openapi.json", "", 200},
		{"/api/v1/changes", "read", 200},
		{"/api/v1/changes?pipeline=billing&state=FAILED&author=alice&targetSystem=warehouse&since=2000-01-01T00:00:00Z&limit=10", "read", 200},
		{"/api/v1/changes?limit=1", "read", 200}, // with nextBeforeSeq
		{"/api/v1/changes?state=NOPE", "read", 400},
		{"/api/v1/changes", "", 401},
		{"/api/v1/changes", "stats", 403},
		{"/api/v1/changes/billing/0003-backfill", "read", 200},
		{"/api/v1/changes/billing/0001-create-customers", "read", 200},
		{"/api/v1/changes/billing/nope", "read", 404},
		{"/api/v1/history", "read", 200},
		{"/api/v1/history?limit=2&beforeSeq=100&pipeline=billing", "read", 200},
		{"/api/v1/history?limit=0", "read", 400},
		{"/api/v1/issues", "read", 200},
		{"/api/v1/issues?all=true&pipeline=billing", "read", 200},
		{"/api/v1/locks", "read", 200},
		{"/api/v1/deadletters", "read", 200},
		{"/api/v1/deadletters?after=0&limit=1", "read", 200},
		{"/api/v1/stats", "stats", 200},
		{"/api/v1/stats?since=2000-01-01T00:00:00Z", "read", 200},
		{"/api/v1/verify", "read", 200},
		{"/api/v1/events", "stats", 403},
	} {
		key := map[string]string{"read": e.readKey, "stats": e.statsKey}[tc.key]
		code, h, body := e.get(tc.path, key)
		if code != tc.code {
			t.Errorf("%s: %d, want %d: %s", tc.path, code, tc.code, body)
		}
		req, _ := http.NewRequest(http.MethodGet, e.url+tc.path, nil)
		covered[conforms(t, router, req, code, h, body)] = true
		switch {
		case tc.path == "/api/v1/locks" && !strings.Contains(string(body), `"deploys"`):
			t.Errorf("locks: %s, want the held lock", body)
		case tc.path == "/api/v1/deadletters" && !strings.Contains(string(body), `"originalSubject"`):
			t.Errorf("deadletters: %s, want the dead letter", body)
		case strings.HasPrefix(tc.path, "/api/v1/stats") && code == 200 && strings.Contains(string(body), `"lag":null`):
			t.Errorf("stats: %s, want lag", body)
		}
	}

	// A verify run recorded (as auditflow verify records it), read back
	// through the API against the VerifyResult schema.
	if _, err := e.nats.JS.CreateStream(ctx, verify.ResultsStreamConfig(1)); err != nil {
		t.Fatal(err)
	}
	rep, err := verify.Verify(ctx, e.nats.JS, e.store, verify.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := verify.Record(ctx, e.nats.JS, rep.Result("sqlite", "tester@host", time.Now())); err != nil {
		t.Fatal(err)
	}
	vcode, vh, vbody := e.get("/api/v1/verify", e.readKey)
	vreq, _ := http.NewRequest(http.MethodGet, e.url+"/api/v1/verify", nil)
	conforms(t, router, vreq, vcode, vh, vbody)
	if vcode != 200 || !strings.Contains(string(vbody), `"recorded":true`) || !strings.Contains(string(vbody), `"by":"tester@host"`) ||
		!strings.Contains(string(vbody), fmt.Sprintf(`"lastSeq":%d`, rep.LastSeq)) {
		t.Errorf("verify after a recorded run: %d %s", vcode, vbody)
	}
	verdict := "passed"
	if rep.Problems() { // the env's garbage message is an open stream problem
		verdict = "found problems"
	}
	if code, _, page := e.get("/lag", e.readKey); code != 200 || !strings.Contains(string(page), verdict) || !strings.Contains(string(page), "by tester@host") {
		t.Errorf("the lag page after a recorded verify run: %d\n%s", code, page)
	}

	// The live endpoint: its response, and an execution event's rows
	// against the Event schema.
	sctx, scancel := context.WithTimeout(ctx, 20*time.Second)
	defer scancel()
	req, _ := http.NewRequestWithContext(sctx, http.MethodGet, e.url+"/api/v1/events", nil)
	req.Header.Set("Authorization", "Bearer "+e.readKey)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	frames := sseFrames(res.Body)
	hello := <-frames
	go func() { _ = e.run("shipping", runner.Change{ID: "0002-rates", Order: "2", Apply: ok}) }()
	var exec sseFrame
	for f := range frames {
		if f.event == "execution" {
			exec = f
			break
		}
	}
	if exec.data == "" {
		t.Fatal("no execution event")
	}
	body := []byte("event: hello\ndata: " + hello.data + "\n\nevent: execution\ndata: " + exec.data + "\n\n")
	covered[conforms(t, router, req, res.StatusCode, res.Header, body)] = true
	var live struct{ Events []json.RawMessage }
	if err := json.Unmarshal([]byte(exec.data), &live); err != nil || len(live.Events) == 0 {
		t.Fatalf("execution event %s: %v", exec.data, err)
	}
	schema := doc.Components.Schemas["Event"].Value
	for _, raw := range live.Events {
		var v any
		_ = json.Unmarshal(raw, &v)
		if err := schema.VisitJSON(v); err != nil {
			t.Errorf("live event %s does not conform to Event: %v", raw, err)
		}
	}

	var missing []string
	for path := range doc.Paths.Map() {
		if !covered[path] {
			missing = append(missing, path)
		}
	}
	slices.Sort(missing)
	if len(missing) > 0 {
		t.Errorf("endpoints with no live response checked: %v", missing)
	}
}

type sseFrame struct{ event, data string }

// sseFrames parses a Server-Sent Events stream until it ends.
func sseFrames(r interface{ Read([]byte) (int, error) }) <-chan sseFrame {
	ch := make(chan sseFrame, 16)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		var f sseFrame
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if f.event != "" || f.data != "" {
					ch <- f
				}
				f = sseFrame{}
			case strings.HasPrefix(line, "event: "):
				f.event = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				if f.data != "" {
					f.data += "\n" // never: the server sends one data line per event
				}
				f.data += strings.TrimPrefix(line, "data: ")
			}
		}
	}()
	return ch
}
