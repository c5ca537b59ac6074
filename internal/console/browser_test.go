package console_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"github.com/auditflow/auditflow/runner"
)

// chromium finds Debian's headless Chromium (apt-get install chromium):
// $AUDITFLOW_CHROMIUM, or chromium or chromium-browser on PATH. Without
// it the browser test skips, or fails under AUDITFLOW_REQUIRE_INTEGRATION=1
// as in CI, which installs it.
func chromium(t *testing.T) string {
	t.Helper()
	candidates := []string{os.Getenv("AUDITFLOW_CHROMIUM"), "chromium", "chromium-browser"}
	for _, c := range candidates {
		if c == "" {
			continue
		}
		if p, err := exec.LookPath(c); err == nil {
			return p
		}
	}
	if os.Getenv("AUDITFLOW_REQUIRE_INTEGRATION") == "1" {
		t.Fatal("no chromium on PATH (apt-get install -y chromium, or set AUDITFLOW_CHROMIUM), and AUDITFLOW_REQUIRE_INTEGRATION=1")
	}
	t.Skip("no chromium on PATH (apt-get install -y chromium, or set AUDITFLOW_CHROMIUM)")
	return ""
}

// artifacts is where the browser test saves its screenshots:
// $AUDITFLOW_TEST_ARTIFACTS, or a new directory under the system's
// temporary one that outlives the test (its path is logged).
func artifacts(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("AUDITFLOW_TEST_ARTIFACTS")
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "auditflow-console-screenshots-"); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshots in %s", dir)
	return dir
}

// TestBrowser drives headless Chromium through the console as an on-call
// engineer would: sign in, open the overview, follow a change to its
// timeline and guidance, read the open issues, and watch a new execution
// appear without reloading — and checks that an event's markup never runs.
func TestBrowser(t *testing.T) {
	bin := chromium(t)
	dir := artifacts(t)
	e := start(t)
	e.seed()
	e.seedXSS()

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(bin),
		chromedp.Flag("headless", "new"), chromedp.NoSandbox, chromedp.WindowSize(1280, 900))
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer acancel()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	// Any dialog is an event's markup running: fail, and close it so the
	// page does not block.
	dialogs := chromedp.Events(ctx, page.JavascriptDialogOpening)
	go func() {
		for ev, err := range dialogs {
			if err != nil {
				return
			}
			t.Errorf("a dialog opened: %q — markup from an event ran", ev.Message)
			_, _ = chromedp.Call(ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: true})
		}
	}()
	do := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		tctx, tcancel := context.WithTimeout(ctx, 30*time.Second)
		defer tcancel()
		if err := chromedp.Do(tctx, actions...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Text(sel))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		return s
	}
	shot := func(name string) {
		t.Helper()
		b, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // quality 100: PNG
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		p := filepath.Join(dir, name+".png")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot: %s", p)
	}

	// Start the browser with no timeout (a timed first Run would bind
	// the browser's life to it).
	if err := chromedp.Do(ctx, chromedp.Navigate(e.url+"/")); err != nil {
		t.Fatal(err)
	}
	do("sign in", chromedp.WaitVisible("#key"), chromedp.SendKeys("#key", e.readKey), chromedp.Click("#signin"),
		chromedp.WaitVisible("#changes"))
	if got := text("#changes"); !strings.Contains(got, "0003-backfill") || !strings.Contains(got, "FAILED") {
		t.Fatalf("overview shows:\n%s", got)
	}
	do("live", chromedp.WaitVisible(".live.on"))
	shot("1-overview")

	do("follow a change", chromedp.Click(`a[href="/changes/billing/0003-backfill"]`), chromedp.WaitVisible("#timeline"))
	if got := text("#timeline"); !strings.Contains(got, "STARTED") || !strings.Contains(got, "deadlock detected") || !strings.Contains(got, "runner-billing") {
		t.Errorf("timeline shows:\n%s", got)
	}
	guidance := text("#guidance")
	for _, want := range []string{"What happened: the change failed (deadlock detected)", `auditflow issue fix -p billing -c 0003-backfill -r applied --reason "..."`} {
		if !strings.Contains(guidance, want) {
			t.Errorf("guidance lacks %q:\n%s", want, guidance)
		}
	}
	shot("2-timeline")

	do("issues", chromedp.Click(`a[href="/issues"]`), chromedp.WaitVisible(".issue"))
	if got := text("main"); !strings.Contains(got, "billing / 0003-backfill") || !strings.Contains(got, "What happened") {
		t.Errorf("issues page shows:\n%s", got)
	}
	shot("3-issues")

	// The XSS change's page shows the failing command's output as text.
	do("xss change", chromedp.Click(`a[href^="/changes/billing/0001-%3cimg"], a[href^="/changes/billing/0001-%3Cimg"]`), chromedp.WaitVisible("#timeline"))
	if got := text("main"); !strings.Contains(got, scriptPayload) || !strings.Contains(got, svgPayload) {
		t.Errorf("the XSS change's page does not show its output as text:\n%s", got)
	}
	shot("4-untrusted-text")

	// A new execution appears on the open overview through SSE, without
	// a reload: a marker set in the page survives.
	do("overview again", chromedp.Click(`a[href="/"]`), chromedp.WaitVisible("#changes"), chromedp.WaitVisible(".live.on"))
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`window.__notReloaded = true`)); err != nil {
		t.Fatal(err)
	}
	begin := time.Now()
	if err := e.run("shipping", runner.Change{ID: "0002-live-rates", Order: "2", Author: "dave", Apply: ok}); err != nil {
		t.Fatal(err)
	}
	stored := time.Now()
	tctx, tcancel := context.WithTimeout(ctx, time.Second)
	err := chromedp.Do(tctx, chromedp.WaitVisible(`a[href="/changes/shipping/0002-live-rates"]`))
	tcancel()
	if err != nil {
		shot("5-live-missing")
		t.Fatalf("the new execution did not appear within a second of being stored: %v", err)
	}
	t.Logf("new execution shown %s after it was stored (%s after the run began)", time.Since(stored).Round(time.Millisecond), time.Since(begin).Round(time.Millisecond))
	if still, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`window.__notReloaded === true`)); err != nil || !still {
		t.Errorf("the page reloaded (%v)", err)
	}
	if got := text("#feed"); !strings.Contains(got, "shipping / 0002-live-rates APPLIED") {
		t.Errorf("live panel shows %q", got)
	}
	shot("5-live")
}
