package console_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/runner"
)

const (
	scriptPayload = `<script>alert(1)</script>`
	svgPayload    = `"><svg onload=alert(1)>`
	// xssChange's id is markup too: ids come from events like the rest.
	xssChange = `0001-<img src=x onerror=alert(2)>`
)

// browser signs in with key through the login form and keeps the
// session cookie, as a browser does.
func (e *env) browser(key string) *http.Client {
	e.t.Helper()
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar}
	res, err := c.PostForm(e.url+"/login", url.Values{"key": {key}, "next": {"/"}})
	if err != nil {
		e.t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK || res.Request.URL.Path != "/" {
		e.t.Fatalf("sign in: %d at %s", res.StatusCode, res.Request.URL)
	}
	return c
}

func fetch(t *testing.T, c *http.Client, u string) (int, string) {
	t.Helper()
	res, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// seedXSS records a change whose failing command printed markup, by an
// author and on a target system whose names are markup, and a dead letter
// on a subject made of markup.
func (e *env) seedXSS() {
	e.t.Helper()
	err := e.run("billing", runner.Change{ID: xssChange, Order: "1", Author: svgPayload, TargetSystem: scriptPayload,
		Metadata: map[string]string{"cmd": svgPayload},
		Apply:    failing("psql: " + scriptPayload + "\n" + svgPayload + "\nexit status 1")})
	if err == nil {
		e.t.Fatal("the XSS change did not fail")
	}
	sc := producer.StreamConfig{}
	_ = sc.Validate()
	if _, err := e.nats.JS.Publish(context.Background(), events.Subject(sc.SubjectPrefix, "billing", scriptPayload), []byte(svgPayload)); err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.proj.WaitCaughtUp(ctx); err != nil {
		e.t.Fatal(err)
	}
}

// TestUntrustedTextIsEscapedEverywhere: what a change's failing command
// printed, and its ids, author and target, render as text on every page,
// in the API and in the live events — never as markup.
func TestUntrustedTextIsEscapedEverywhere(t *testing.T) {
	e := start(t)
	e.seedXSS()
	c := e.browser(e.readKey)
	changeURL := "/changes/billing/" + url.PathEscape(xssChange)
	raw := []string{scriptPayload, svgPayload, "<svg onload", "<img src"} // markup that would run; the words alone are text
	for _, tc := range []struct {
		path  string
		shown []string // escaped text that must be on the page
	}{
		{"/", []string{"0001-&lt;img src=x onerror=alert(2)&gt;", "&lt;script&gt;alert(1)&lt;/script&gt;", "&#34;&gt;&lt;svg onload=alert(1)&gt;"}},
		{"/?state=FAILED", []string{"0001-&lt;img src=x onerror=alert(2)&gt;"}},
		{changeURL, []string{"&lt;script&gt;alert(1)&lt;/script&gt;", "&#34;&gt;&lt;svg onload=alert(1)&gt;", "What to do"}},
		{"/issues", []string{"&lt;script&gt;alert(1)&lt;/script&gt;", "0001-&lt;img src=x onerror=alert(2)&gt;"}},
		{"/deadletters", []string{"billing"}},
		{"/locks", nil},
		{"/lag", nil},
	} {
		code, body := fetch(t, c, e.url+tc.path)
		if code != http.StatusOK {
			t.Fatalf("%s: %d\n%s", tc.path, code, body)
		}
		for _, r := range raw {
			if strings.Contains(body, r) {
				t.Errorf("%s: raw %q in the page", tc.path, r)
			}
		}
		for _, s := range tc.shown {
			if !strings.Contains(body, s) {
				t.Errorf("%s: %q not shown", tc.path, s)
			}
		}
		if strings.Count(body, "<script") != 1 || !strings.Contains(body, `<script src="/static/console.js" defer></script>`) {
			t.Errorf("%s: a script other than the console's own", tc.path)
		}
	}
	// The fix command shell-quotes the id: people paste it.
	_, body := fetch(t, c, e.url+changeURL)
	if want := "-c &#39;0001-&lt;img src=x onerror=alert(2)&gt;&#39; -r applied"; !strings.Contains(body, want) {
		t.Errorf("change page: no shell-quoted fix command %q", want)
	}

	// The API: JSON with markup escaped (\u003c), and the text intact.
	for _, path := range []string{"/api/v1/changes", "/api/v1/history", "/api/v1/issues", "/api/v1/changes/billing/" + url.PathEscape(xssChange), "/api/v1/deadletters"} {
		code, _, body := e.get(path, e.readKey)
		if code != http.StatusOK {
			t.Fatalf("%s: %d %s", path, code, body)
		}
		for _, r := range raw {
			if strings.Contains(string(body), r) {
				t.Errorf("%s: raw %q in the JSON", path, r)
			}
		}
		if path != "/api/v1/deadletters" && !strings.Contains(string(body), `\u003cscript\u003ealert(1)\u003c/script\u003e`) {
			t.Errorf("%s: the payload is not in the JSON, escaped", path)
		}
	}
	_, _, api := e.get("/api/v1/changes/billing/"+url.PathEscape(xssChange), e.readKey)
	var detail struct {
		Change struct {
			ChangeID, Author, TargetSystem, ErrorTrace string
		}
	}
	if err := json.Unmarshal(api, &detail); err != nil {
		t.Fatal(err)
	}
	if d := detail.Change; d.ChangeID != xssChange || d.Author != svgPayload || d.TargetSystem != scriptPayload ||
		!strings.Contains(d.ErrorTrace, scriptPayload+"\n"+svgPayload) {
		t.Errorf("the API changed the text: %+v", d)
	}

	// The live events: one JSON line per event, markup escaped.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.url+"/api/v1/events", nil)
	res, err := c.Do(req) // the session cookie lets the page's script in
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	frames := sseFrames(res.Body)
	<-frames // hello
	go func() {
		_ = e.run("billing", runner.Change{ID: xssChange + "-2", Order: "2", Author: svgPayload, Apply: failing(scriptPayload + "\n" + svgPayload)})
	}()
	for f := range frames {
		if f.event != "execution" || !strings.Contains(f.data, "FAILED") {
			continue
		}
		if strings.Contains(f.data, "\n") {
			t.Errorf("SSE data holds a raw newline: %q", f.data)
		}
		for _, r := range raw {
			if strings.Contains(f.data, r) {
				t.Errorf("SSE data holds raw %q", r)
			}
		}
		var live struct {
			Events []struct{ ErrorTrace, Author string }
		}
		if err := json.Unmarshal([]byte(f.data), &live); err != nil || len(live.Events) == 0 ||
			live.Events[0].ErrorTrace != scriptPayload+"\n"+svgPayload || live.Events[0].Author != svgPayload {
			t.Errorf("SSE data %s does not carry the text intact (%v)", f.data, err)
		}
		return
	}
	t.Fatal("no FAILED execution event")
}
