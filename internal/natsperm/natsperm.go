// Package natsperm turns NATS permission violations into errors that name
// the denied subject.
//
// A NATS server refuses a publish or subscription the user has no right to
// asynchronously: it sends the client an -ERR, which nats.go records as the
// connection's last error (and passes to its error handler), while the
// request itself waits for an answer that never comes. Without a look at
// the connection, a missing right is reported, after the request's timeout,
// as "context deadline exceeded". Watch and Do look while a request is in
// flight and end it as soon as a violation arrives, with an *Error that
// says which subject the user may not use.
//
// producer, lock and projector share it (lock must not import producer).
package natsperm

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// Error is a publish or subscription the server refused for the user's
// permissions. It wraps the connection's error, so errors.Is(err,
// nats.ErrPermissionViolation) holds.
type Error struct {
	Op      string // "publish" or "subscribe"
	Subject string // the denied subject (or reply subject)
	Err     error  // the connection's error
}

func (e *Error) Error() string {
	verb := "publish to"
	if e.Op == "subscribe" {
		verb = "subscribe to"
	}
	return fmt.Sprintf("permission denied: this NATS user may not %s %q (the server refused it; grant the right in the server's authorization for this role, or connect as a user that has it: see docs/security.md, Roles)",
		verb, e.Subject)
}

func (e *Error) Unwrap() error { return e.Err }

// violationRe matches the server's texts: Permissions Violation for
// Publish to "s", for Subscription to "s" (using queue "q"), for Publish
// with Reply of "s".
var violationRe = regexp.MustCompile(`(?i)permissions violation for (publish to|publish with reply of|subscription to) "([^"]+)"`)

// Parse returns the violation err reports, if it is one.
func Parse(err error) (*Error, bool) {
	if err == nil || !errors.Is(err, nats.ErrPermissionViolation) {
		return nil, false
	}
	var pe *Error
	if errors.As(err, &pe) {
		return pe, true
	}
	m := violationRe.FindStringSubmatch(err.Error())
	if m == nil {
		return &Error{Op: "publish", Subject: "(unknown subject)", Err: err}, true
	}
	op := "publish"
	if strings.EqualFold(m[1], "subscription to") {
		op = "subscribe"
	}
	return &Error{Op: op, Subject: m[2], Err: err}, true
}

// Match decides whether a violation concerns the request being watched.
type Match func(*Error) bool

// JetStream matches violations on the JetStream API ($JS.…), KV subjects
// ($KV.…) and reply inboxes (_INBOX.…): what a JetStream request, or its
// answer, needs.
func JetStream(e *Error) bool {
	return strings.HasPrefix(e.Subject, "$JS.") || strings.HasPrefix(e.Subject, "$KV.") || strings.HasPrefix(e.Subject, "_INBOX.")
}

// Subjects matches violations on the given subjects and on anything
// JetStream matches.
func Subjects(subjects ...string) Match {
	return func(e *Error) bool {
		for _, s := range subjects {
			if e.Subject == s {
				return true
			}
		}
		return JetStream(e)
	}
}

// pollEvery is how often Watch looks at the connection's last error.
const pollEvery = 10 * time.Millisecond

// Watch returns a context derived from ctx that is cancelled, with the
// *Error as its cause (see Cause), as soon as nc reports a permission
// violation that match accepts (nil: any) and that arrived after Watch was
// called. stop releases the watcher; call it when the request is done.
func Watch(ctx context.Context, nc *nats.Conn, match Match) (wctx context.Context, stop func()) {
	wctx, cancel := context.WithCancelCause(ctx)
	if nc == nil {
		return wctx, func() { cancel(nil) }
	}
	before := nc.LastError()
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(pollEvery)
		defer t.Stop()
		for {
			select {
			case <-wctx.Done():
				return
			case <-done:
				return
			case <-t.C:
			}
			err := nc.LastError()
			if same(err, before) {
				continue
			}
			before = err
			if pe, ok := Parse(err); ok && (match == nil || match(pe)) {
				cancel(pe)
				return
			}
		}
	})
	return wctx, func() { close(done); wg.Wait(); cancel(nil) }
}

// Cause returns the violation that ended a Watch context, or nil.
func Cause(ctx context.Context) *Error {
	var pe *Error
	if errors.As(context.Cause(ctx), &pe) {
		return pe
	}
	return nil
}

// Do runs op under Watch. If op fails while a matching violation is
// reported, Do returns the *Error instead of op's error (a cancelled
// context or a timeout, which says nothing useful).
func Do[T any](ctx context.Context, nc *nats.Conn, match Match, op func(context.Context) (T, error)) (T, error) {
	wctx, stop := Watch(ctx, nc, match)
	defer stop()
	v, err := op(wctx)
	if err != nil {
		if pe := Cause(wctx); pe != nil {
			return v, pe
		}
	}
	return v, err
}

// Since returns the connection's last error if it is a violation that
// match accepts (nil: any) and arrived after before, the last error read
// before the request (nc.LastError()): for a request whose answer comes
// after the server's verdict on it (a subscription followed by a flush),
// so that the check needs no Watch.
func Since(nc *nats.Conn, before error, match Match) *Error {
	if nc == nil {
		return nil
	}
	err := nc.LastError()
	if same(err, before) {
		return nil
	}
	if pe, ok := Parse(err); ok && (match == nil || match(pe)) {
		return pe
	}
	return nil
}

// same reports whether a and b are the same error value; comparing
// interfaces that hold uncomparable types would panic.
func same(a, b error) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	ta, tb := reflect.TypeOf(a), reflect.TypeOf(b)
	if ta != tb || !ta.Comparable() {
		return false
	}
	return a == b
}
