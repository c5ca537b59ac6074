package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The test binary doubles as the fencing command (its main is this
// package's), so the concurrency test runs real separate processes, as
// racing change commands would be.
const beMainEnv = "FENCING_TEST_BE_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(beMainEnv) == "1" {
		main()
	}
	os.Exit(m.Run())
}

// fencing runs the command as a separate process; code is -1 if it could
// not be run (stderr says why).
func fencing(t *testing.T, env []string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(append(os.Environ(), beMainEnv+"=1"), env...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exitErr *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exitErr):
		code = exitErr.ExitCode()
	default:
		return -1, "", err.Error() // no t.Fatal: callers may be other goroutines
	}
	return code, out.String(), errOut.String()
}

func TestStaleTokenRefused(t *testing.T) {
	db := filepath.Join(t.TempDir(), "target.db")
	write := func(token, text string) (int, string, string) {
		return fencing(t, []string{tokenEnv + "=" + token}, "-db", db, "-resource", "orders", "-write", text)
	}
	if code, _, stderr := write("9", "new holder"); code != exitOK {
		t.Fatalf("first write: exit %d: %s", code, stderr)
	}
	code, _, stderr := write("5", "old holder, woken up")
	if code != exitFenced || strings.TrimSpace(stderr) != "fenced: resource orders was last written under lock token 9; this execution holds token 5 (stale): write refused" {
		t.Fatalf("stale write: exit %d: %q", code, stderr)
	}
	for _, tok := range []string{"9", "10"} { // the same holder again, then a newer one
		if code, _, stderr := write(tok, "token "+tok); code != exitOK {
			t.Fatalf("token %s: exit %d: %s", tok, code, stderr)
		}
	}
	if code, _, stderr := fencing(t, nil, "-db", db, "-resource", "orders", "-write", "x", "-token", "9"); code != exitFenced {
		t.Fatalf("-token 9 after 10: exit %d: %s", code, stderr)
	}
	// Another resource has its own fence.
	if code, _, stderr := fencing(t, nil, "-db", db, "-resource", "customers", "-write", "x", "-token", "1"); code != exitOK {
		t.Fatalf("other resource: exit %d: %s", code, stderr)
	}
	code, out, stderr := fencing(t, nil, "-db", db, "-show")
	if code != exitOK {
		t.Fatalf("show: exit %d: %s", code, stderr)
	}
	for _, want := range []string{"fence orders 10 ", "fence customers 1 ", `orders 9 `, `"new holder"`, `"token 10"`} {
		if !strings.Contains(out, want) {
			t.Errorf("show lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "woken up") {
		t.Errorf("the refused write was recorded:\n%s", out)
	}
}

func TestUsage(t *testing.T) {
	db := filepath.Join(t.TempDir(), "target.db")
	for name, args := range map[string][]string{
		"no db":       {"-resource", "orders", "-write", "x", "-token", "1"},
		"no resource": {"-db", db, "-write", "x", "-token", "1"},
		"no token":    {"-db", db, "-resource", "orders", "-write", "x"},
		"bad token":   {"-db", db, "-resource", "orders", "-write", "x", "-token", "-1"},
	} {
		var out, errOut bytes.Buffer
		if code := run(context.Background(), args, "", &out, &errOut); code != exitUsage || errOut.Len() == 0 {
			t.Errorf("%s: exit %d, stderr %q", name, code, errOut.String())
		}
	}
}

// Racing holders, each in its own process: whatever the order they reach
// the target in, once a token has written no older token writes after it,
// and every refusal names a newer token than its own.
func TestConcurrentHoldersNeverBothWin(t *testing.T) {
	db := filepath.Join(t.TempDir(), "target.db")
	tokens := rand.Perm(8)
	var wg sync.WaitGroup
	type outcome struct {
		token  int
		code   int
		stderr string
	}
	results := make(chan outcome, len(tokens))
	for _, tok := range tokens {
		wg.Go(func() {
			code, _, stderr := fencing(t, nil, "-db", db, "-resource", "orders", "-write", fmt.Sprint("holder ", tok+1), "-token", strconv.Itoa(tok+1))
			results <- outcome{tok + 1, code, stderr}
		})
	}
	wg.Wait()
	close(results)
	won := map[int]bool{}
	for r := range results {
		switch r.code {
		case exitOK:
			won[r.token] = true
		case exitFenced:
			var stored, ours int
			if _, err := fmt.Sscanf(r.stderr, "fenced: resource orders was last written under lock token %d; this execution holds token %d", &stored, &ours); err != nil || ours != r.token || stored <= ours {
				t.Errorf("token %d refused with %q", r.token, r.stderr)
			}
		default:
			t.Errorf("token %d: exit %d: %s", r.token, r.code, r.stderr)
		}
	}
	if !won[len(tokens)] {
		t.Errorf("the newest token %d was refused", len(tokens))
	}
	assertMonotonic(t, db, len(won))
}

// The same race with many more rounds, in-process over separate
// connections, to make an unlucky interleaving likely if the fence allowed
// one.
func TestConcurrentWritersInProcess(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "target.db")
	const writers, rounds = 4, 25
	dbs := make([]interface{ Close() error }, 0, writers)
	var wg sync.WaitGroup
	for w := range writers {
		db, err := open(ctx, path)
		if err != nil {
			t.Fatal(err)
		}
		dbs = append(dbs, db)
		wg.Go(func() {
			for i := range rounds {
				tok := uint64(rand.IntN(writers*rounds)) + 1
				err := write(ctx, db, "orders", tok, fmt.Sprint("w", w, " r", i), time.Now())
				if err != nil && !errors.Is(err, errFenced) {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	for _, db := range dbs {
		db.Close()
	}
	assertMonotonic(t, path, -1)
}

// assertMonotonic checks that the recorded writes' tokens never go down in
// commit order, and that the fence holds the last one; want >= 0 is the
// number of writes expected.
func assertMonotonic(t *testing.T, path string, want int) {
	t.Helper()
	db, err := open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(`SELECT token FROM writes ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var last uint64
	n := 0
	for rows.Next() {
		var tok uint64
		if err := rows.Scan(&tok); err != nil {
			t.Fatal(err)
		}
		if tok < last {
			t.Fatalf("write under token %d committed after one under token %d", tok, last)
		}
		last, n = tok, n+1
	}
	var fence uint64
	if err := db.QueryRow(`SELECT token FROM fences WHERE resource = 'orders'`).Scan(&fence); err != nil || fence != last {
		t.Fatalf("fence %d (%v), last write under %d", fence, err, last)
	}
	if want >= 0 && n != want {
		t.Fatalf("%d writes recorded, %d holders were told they won", n, want)
	}
}
