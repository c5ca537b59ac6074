package console

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/inspect"
	"github.com/auditflow/auditflow/internal/timeflag"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/verify"
)

func (s *Server) routes() {
	m := s.mux
	m.HandleFunc("GET /api/v1/openapi.json", s.openAPI)
	m.HandleFunc("GET /api/v1/changes", s.api(permRead, list(s, s.changes)))
	m.HandleFunc("GET /api/v1/changes/{pipeline}/{change}", s.api(permRead, s.apiChange))
	m.HandleFunc("GET /api/v1/history", s.api(permRead, list(s, s.history)))
	m.HandleFunc("GET /api/v1/issues", s.api(permRead, list(s, s.issues)))
	m.HandleFunc("GET /api/v1/locks", s.api(permRead, s.apiLocks))
	m.HandleFunc("GET /api/v1/deadletters", s.api(permRead, s.apiDeadLetters))
	m.HandleFunc("GET /api/v1/stats", s.api(permStats, s.apiStats))
	m.HandleFunc("GET /api/v1/verify", s.api(permRead, s.apiVerify))
	m.HandleFunc("GET /api/v1/events", s.api(permRead, s.apiEvents))
	m.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not_found", "no such endpoint: "+r.URL.Path+" (see /api/v1/openapi.json)")
	})
	s.pageRoutes()
}

// apiError is every error body of the API.
type apiError struct {
	Error   string `json:"error"`   // a stable code: unauthorized, forbidden, bad_request, not_found, unavailable, internal
	Message string `json:"message"` // for people
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w) // escapes <, > and & in strings: safe to sniff as anything
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, apiError{Error: code, Message: msg})
}

// list serves a list endpoint: its filters parsed, fn's answer as JSON.
func list[T any](s *Server, fn func(context.Context, filters) (T, error)) func(http.ResponseWriter, *http.Request, who) {
	return func(w http.ResponseWriter, r *http.Request, _ who) {
		f, err := parseFilters(r.URL.Query())
		var out T
		if err == nil {
			out, err = fn(r.Context(), f)
		}
		s.answer(w, r, out, err)
	}
}

// answer writes out as JSON, or err.
func (s *Server) answer(w http.ResponseWriter, r *http.Request, out any, err error) {
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// fail answers err: a bad query is the caller's (400), a missing change
// 404, anything else ours (500).
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, errNoChange) {
		writeError(w, http.StatusNotFound, "not_found", err.Error())
		return
	}
	if errors.Is(err, stores.ErrInvalidQuery) || errors.As(err, new(badRequest)) {
		writeError(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	if r.Context().Err() != nil {
		return // the client went away
	}
	s.log.Warn("console: request failed", "path", r.URL.Path, "err", err)
	writeError(w, http.StatusInternalServerError, "internal", err.Error())
}

type badRequest struct{ error }

func bad(format string, args ...any) error { return badRequest{fmt.Errorf(format, args...)} }

// filters are the query parameters the list endpoints share.
type filters struct {
	Pipeline, Change, Author, Target string
	State                            events.State
	Status                           stores.IssueStatus
	Since, Until                     time.Time
	BeforeSeq                        uint64
	Limit                            int
	All                              bool
}

// parseFilters reads the list parameters, refusing bad values with a
// message that names the parameter.
func parseFilters(q url.Values) (filters, error) {
	f := filters{Pipeline: q.Get("pipeline"), Change: q.Get("change"), Author: q.Get("author"), Target: q.Get("targetSystem"),
		State: events.State(strings.ToUpper(q.Get("state"))), Status: stores.IssueStatus(strings.ToUpper(q.Get("status"))), Limit: stores.DefaultLimit}
	if f.State != "" && !slices.Contains(events.States, f.State) {
		return f, bad("state: unknown state %q", q.Get("state"))
	}
	switch f.Status {
	case "", stores.IssueOpen, stores.IssueInProgress, stores.IssueClosed:
	default:
		return f, bad("status: want OPEN, IN_PROGRESS or CLOSED, got %q", q.Get("status"))
	}
	var err error
	now := time.Now()
	for name, t := range map[string]*time.Time{"since": &f.Since, "until": &f.Until} {
		if v := q.Get(name); v != "" {
			tv, err := timeflag.Parse(v) // the CLI's syntax: 24h or an RFC 3339 time
			if err != nil {
				return f, bad("%s: want %s, got %q", name, timeflag.Syntax, v)
			}
			*t = tv.At(now)
		}
	}
	if v := q.Get("beforeSeq"); v != "" {
		if f.BeforeSeq, err = strconv.ParseUint(v, 10, 64); err != nil {
			return f, bad("beforeSeq: want a stream sequence, got %q", v)
		}
	}
	if v := q.Get("limit"); v != "" {
		if f.Limit, err = strconv.Atoi(v); err != nil || f.Limit < 1 || f.Limit > maxPage {
			return f, bad("limit: want 1..%d, got %q", maxPage, v)
		}
	}
	if v := q.Get("all"); v != "" {
		if f.All, err = strconv.ParseBool(v); err != nil {
			return f, bad("all: want true or false, got %q", v)
		}
	}
	return f, nil
}

// storePipeline is the pipeline filter to hand the store. With a change id
// the store finds the change's rows through its (pipeline, change) index;
// a pipeline alone is filtered here instead, on the rows read newest
// first: the stores index pipelines only together with change ids, and
// SQLite answers "a pipeline's newest rows" by sorting all of that
// pipeline's rows — 0.4-0.9 s at a million events (BenchmarkConsole1M).
func (f filters) storePipeline() string {
	if f.Change != "" {
		return f.Pipeline
	}
	return ""
}

func (f filters) pipelineMatch(p string) bool { return f.Pipeline == "" || p == f.Pipeline }

const (
	// maxPage bounds a page of the API.
	maxPage = 1000
	// scanBudget bounds the rows one request reads from the store to apply
	// the filters the store cannot (author, target system, until): a page
	// may then hold fewer rows than asked while nextBeforeSeq says where
	// to go on. It keeps every request's time bounded whatever the data:
	// measured on SQLite at a million events on a loaded 2-core machine,
	// reading a row costs 13-20 µs: 1,000 rows gave a p99 of 69 ms under
	// load 4 (BenchmarkConsole1M, api/history/no-match), 500 keeps the
	// goal of 50 ms with room for such a machine's tail.
	scanBudget = 500
)

// scan reads pages of rows older than before (newest first) with fetch,
// keeps those keep accepts, and stops at limit kept rows, at the end of
// the rows, or after scanBudget rows read. next is the cursor for the
// following page (0: there is none). filtered says keep may refuse rows:
// then it reads ahead in larger pages; else it reads exactly limit rows.
func scan[T any](ctx context.Context, before uint64, limit int, filtered bool, fetch func(ctx context.Context, before uint64, n int) ([]T, error),
	seq func(T) uint64, keep func(T) bool) (out []T, next uint64, err error) {
	out = []T{}
	read := 0
	n := limit
	if filtered {
		n = min(max(limit*2, 250), scanBudget)
	}
	for {
		page, err := fetch(ctx, before, n)
		if err != nil {
			return nil, 0, err
		}
		for _, row := range page {
			read++
			before = seq(row)
			if keep(row) {
				out = append(out, row)
				if len(out) == limit {
					return out, before, nil
				}
			}
		}
		if len(page) < n {
			return out, 0, nil
		}
		if read >= scanBudget {
			return out, before, nil
		}
	}
}

// changeRow is a change's current state as the API shows it.
type changeRow struct {
	inspect.IssueView
}

type changesOut struct {
	Changes       []changeRow `json:"changes"`
	NextBeforeSeq uint64      `json:"nextBeforeSeq,omitempty"`
}

func (s *Server) changes(ctx context.Context, f filters) (changesOut, error) {
	now := time.Now()
	q := stores.IssueQuery{Pipeline: f.storePipeline(), ChangeID: f.Change, Status: f.Status}
	if f.State != "" && q.Status == "" && stores.StatusOf(f.State) == stores.IssueOpen {
		// A change in a failed state is OPEN whatever its trust: the
		// store's status index then narrows the rows read.
		q.Status = stores.IssueOpen
	}
	filtered := f.State != "" || f.Author != "" || f.Target != "" || !f.Since.IsZero() || !f.Until.IsZero() || f.Pipeline != q.Pipeline
	rows, next, err := scan(ctx, f.BeforeSeq, f.Limit, filtered,
		func(ctx context.Context, before uint64, n int) ([]stores.Issue, error) {
			q.BeforeSeq, q.Limit = before, n
			return s.cfg.Store.Issues(ctx, q)
		},
		func(i stores.Issue) uint64 { return i.Seq },
		func(i stores.Issue) bool {
			return f.pipelineMatch(i.Pipeline) && (f.State == "" || i.State == f.State) && (f.Author == "" || i.Author == f.Author) &&
				(f.Target == "" || i.TargetSystem == f.Target) && (f.Since.IsZero() || !i.UpdatedAt.Before(f.Since)) &&
				(f.Until.IsZero() || i.UpdatedAt.Before(f.Until))
		})
	if err != nil {
		return changesOut{}, err
	}
	out := changesOut{Changes: make([]changeRow, len(rows)), NextBeforeSeq: next}
	for i, r := range rows {
		out.Changes[i] = changeRow{inspect.ViewOf(r, now, s.cfg.StaleAfter)}
	}
	return out, nil
}

// eventRow is a changeLog row as the API shows it: with the error trace.
type eventRow struct {
	inspect.HistoryRow
	ErrorTrace string `json:"errorTrace,omitempty"`
}

type historyOut struct {
	Events        []eventRow `json:"events"`
	NextBeforeSeq uint64     `json:"nextBeforeSeq,omitempty"`
}

func eventRows(recs []stores.Record) []eventRow {
	h := inspect.HistoryRows(recs)
	out := make([]eventRow, len(recs))
	for i := range recs {
		out[i] = eventRow{HistoryRow: h[i], ErrorTrace: recs[i].ErrorTrace}
	}
	return out
}

func (s *Server) history(ctx context.Context, f filters) (historyOut, error) {
	q := stores.HistoryQuery{Pipeline: f.storePipeline(), ChangeID: f.Change, State: f.State, Since: f.Since}
	filtered := f.Author != "" || f.Target != "" || !f.Until.IsZero() || f.Pipeline != q.Pipeline
	rows, next, err := scan(ctx, f.BeforeSeq, f.Limit, filtered,
		func(ctx context.Context, before uint64, n int) ([]stores.Record, error) {
			q.BeforeSeq, q.Limit = before, n
			return s.cfg.Store.History(ctx, q)
		},
		func(r stores.Record) uint64 { return r.Seq },
		func(r stores.Record) bool {
			return f.pipelineMatch(r.Pipeline) && (f.Author == "" || r.Author == f.Author) && (f.Target == "" || r.TargetSystem == f.Target) &&
				(f.Until.IsZero() || r.OccurredAt.Before(f.Until))
		})
	if err != nil {
		return historyOut{}, err
	}
	return historyOut{Events: eventRows(rows), NextBeforeSeq: next}, nil
}

// issueOut is an issue with what to do about it.
type issueOut struct {
	inspect.IssueView
	ErrorTrace  string   `json:"errorTrace,omitempty"`
	Guidance    string   `json:"guidance"`
	FixCommands []string `json:"fixCommands"`
}

func (s *Server) issueOf(i stores.Issue, now time.Time) issueOut {
	v := inspect.ViewOf(i, now, s.cfg.StaleAfter)
	return issueOut{IssueView: v, ErrorTrace: i.ErrorTrace, Guidance: inspect.Guide(v), FixCommands: inspect.FixCommands(v)}
}

type issuesOut struct {
	Issues        []issueOut `json:"issues"`
	NextBeforeSeq uint64     `json:"nextBeforeSeq,omitempty"`
}

// issues are the changes that need an operator (f.All: every change's
// row), as issue list shows them, a page at a time. Those are OPEN rows
// and IN_PROGRESS ones that went stale: both are read through the store's
// status filter (an index), merged newest first, so a page costs the same
// in a store of a million changes as in one of ten.
func (s *Server) issues(ctx context.Context, f filters) (issuesOut, error) {
	now := time.Now()
	statuses := []stores.IssueStatus{stores.IssueOpen, stores.IssueInProgress}
	if f.All {
		statuses = []stores.IssueStatus{""}
	}
	filtered := !f.All || f.Pipeline != f.storePipeline()
	rows, next, err := scan(ctx, f.BeforeSeq, f.Limit, filtered,
		func(ctx context.Context, before uint64, n int) ([]stores.Issue, error) {
			var merged []stores.Issue
			for _, st := range statuses {
				page, err := s.cfg.Store.Issues(ctx, stores.IssueQuery{Pipeline: f.storePipeline(), ChangeID: f.Change, Status: st, BeforeSeq: before, Limit: n})
				if err != nil {
					return nil, err
				}
				merged = append(merged, page...)
			}
			slices.SortFunc(merged, func(a, b stores.Issue) int { return cmp.Compare(b.Seq, a.Seq) })
			return merged[:min(len(merged), n)], nil
		},
		func(i stores.Issue) uint64 { return i.Seq },
		func(i stores.Issue) bool {
			return f.pipelineMatch(i.Pipeline) && (f.All || inspect.ViewOf(i, now, s.cfg.StaleAfter).NeedsOperator)
		})
	if err != nil {
		return issuesOut{}, err
	}
	out := issuesOut{Issues: make([]issueOut, len(rows)), NextBeforeSeq: next}
	for i, r := range rows {
		out.Issues[i] = s.issueOf(r, now)
	}
	return out, nil
}

// changeOut is one change: its state, what to do, and its timeline.
type changeOut struct {
	Change  issueOut   `json:"change"`
	History []eventRow `json:"history"`
	// More says the change has older events than the history holds.
	More bool `json:"more"`
}

// timelineMax bounds the events of one change shown at once.
const timelineMax = 1000

var errNoChange = errors.New("no such change")

func (s *Server) change(ctx context.Context, pipeline, change string) (changeOut, error) {
	is, err := s.cfg.Store.Issues(ctx, stores.IssueQuery{Pipeline: pipeline, ChangeID: change, Limit: 1})
	if err != nil {
		return changeOut{}, err
	}
	if len(is) == 0 {
		return changeOut{}, fmt.Errorf("%w: no change %q in pipeline %q in this store", errNoChange, change, pipeline)
	}
	recs, err := s.cfg.Store.History(ctx, stores.HistoryQuery{Pipeline: pipeline, ChangeID: change, Limit: timelineMax + 1})
	if err != nil {
		return changeOut{}, err
	}
	out := changeOut{Change: s.issueOf(is[0], time.Now()), More: len(recs) > timelineMax}
	out.History = eventRows(recs[:min(len(recs), timelineMax)])
	return out, nil
}

func (s *Server) apiChange(w http.ResponseWriter, r *http.Request, _ who) {
	out, err := s.change(r.Context(), r.PathValue("pipeline"), r.PathValue("change"))
	s.answer(w, r, out, err)
}

// lockRow is a held pipeline lock.
type lockRow struct {
	Pipeline   string    `json:"pipeline"`
	Holder     string    `json:"holder"`
	Token      uint64    `json:"token"`
	Revision   uint64    `json:"revision"`
	AcquiredAt time.Time `json:"acquiredAt"`
	ExpiresAt  time.Time `json:"expiresAt"`
}

type locksOut struct {
	Locks []lockRow `json:"locks"`
	Note  string    `json:"note,omitempty"`
}

func (s *Server) locks(ctx context.Context) (locksOut, error) {
	out := locksOut{Locks: []lockRow{}}
	if s.cfg.Locks == nil {
		out.Note = "no lock bucket configured"
		return out, nil
	}
	infos, err := s.cfg.Locks.List(ctx)
	if err != nil {
		return out, err
	}
	for _, i := range infos {
		out.Locks = append(out.Locks, lockRow{Pipeline: i.Name, Holder: i.Owner, Token: i.Token, Revision: i.Revision, AcquiredAt: i.AcquiredAt, ExpiresAt: i.ExpiresAt})
	}
	return out, nil
}

func (s *Server) apiLocks(w http.ResponseWriter, r *http.Request, _ who) {
	out, err := s.locks(r.Context())
	s.answer(w, r, out, err)
}

type deadLettersOut struct {
	DeadLetters []inspect.DeadLetter `json:"deadLetters"`
	Total       uint64               `json:"total"`
	NextAfter   uint64               `json:"nextAfter,omitempty"`
	Note        string               `json:"note,omitempty"`
}

func (s *Server) deadLetters(ctx context.Context, after uint64, limit int) (deadLettersOut, error) {
	out := deadLettersOut{DeadLetters: []inspect.DeadLetter{}}
	if s.cfg.JS == nil {
		out.Note = "no NATS connection: dead letters are on the stream"
		return out, nil
	}
	dls, total, err := inspect.ReadDeadLetters(ctx, s.cfg.JS, after, limit+1, s.log)
	if errors.Is(err, inspect.ErrNoDeadLetterStream) {
		out.Note = err.Error()
		return out, nil
	}
	if err != nil {
		return out, err
	}
	out.Total = total
	if len(dls) > limit {
		dls = dls[:limit]
		out.NextAfter = dls[limit-1].Seq
	}
	out.DeadLetters = dls
	return out, nil
}

func (s *Server) apiDeadLetters(w http.ResponseWriter, r *http.Request, _ who) {
	q := r.URL.Query()
	var after uint64
	limit := stores.DefaultLimit
	var err error
	if v := q.Get("after"); v != "" {
		if after, err = strconv.ParseUint(v, 10, 64); err != nil {
			s.fail(w, r, bad("after: want a sequence of AUDIT_DEADLETTER, got %q", v))
			return
		}
	}
	if v := q.Get("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 1 || limit > maxPage {
			s.fail(w, r, bad("limit: want 1..%d, got %q", maxPage, v))
			return
		}
	}
	out, err := s.deadLetters(r.Context(), after, limit)
	s.answer(w, r, out, err)
}

// statsOut is the projection's health: lag, checkpoint, write latency.
type statsOut struct {
	Since      time.Time `json:"since"`
	OpenIssues int       `json:"openIssues"`
	Checkpoint uint64    `json:"checkpoint"`
	inspect.Health
}

func (s *Server) stats(ctx context.Context, since time.Time) (statsOut, error) {
	out := statsOut{Since: since.UTC(), Health: inspect.Health{Notes: []string{}}}
	cp, err := s.cfg.Store.Checkpoint(ctx, s.cfg.Consumer)
	if err != nil {
		return out, err
	}
	out.Checkpoint = cp
	if out.OpenIssues, err = inspect.CountIssues(ctx, s.cfg.Store, stores.IssueQuery{Status: stores.IssueOpen}); err != nil {
		return out, err
	}
	if s.cfg.JS == nil {
		out.Notes = append(out.Notes, "no NATS connection: no lag, write latency or dead letters")
		return out, nil
	}
	out.Health = inspect.ReadHealth(ctx, s.cfg.JS, s.cfg.Store, inspect.Projection{Stream: s.cfg.Stream, Consumer: s.cfg.Consumer, Kind: s.cfg.StoreKind}, out.Since, s.log)
	return out, nil
}

func (s *Server) apiStats(w http.ResponseWriter, r *http.Request, _ who) {
	since := time.Now().Add(-time.Hour)
	if v := r.URL.Query().Get("since"); v != "" {
		now := time.Now()
		tv, err := timeflag.ParseSince(v, now)
		if err != nil {
			s.fail(w, r, bad("since: %v (want %s)", err, timeflag.Syntax))
			return
		}
		since = tv.At(now)
	}
	out, err := s.stats(r.Context(), since)
	s.answer(w, r, out, err)
}

type verifyOut struct {
	Recorded bool           `json:"recorded"`
	Note     string         `json:"note"`
	Result   *verify.Result `json:"result,omitempty"`
}

// apiVerify answers the newest verify result recorded for this store
// (auditflow verify records each run on the AUDIT_VERIFY stream).
func (s *Server) apiVerify(w http.ResponseWriter, r *http.Request, _ who) {
	out, err := s.lastVerify(r.Context())
	s.answer(w, r, out, err)
}

// lastVerify reads the newest verify result, for the API and the lag page.
func (s *Server) lastVerify(ctx context.Context) (verifyOut, error) {
	if s.cfg.JS == nil {
		return verifyOut{Note: "not connected to NATS: verify results are read from the AUDIT_VERIFY stream"}, nil
	}
	res, ok, err := verify.LastResult(ctx, s.cfg.JS, s.cfg.StoreKind)
	switch {
	case err != nil:
		return verifyOut{}, err
	case !ok:
		return verifyOut{Note: "no verify result is recorded for this store: run auditflow verify"}, nil
	case !res.OK:
		return verifyOut{Recorded: true, Note: "verify found problems: run auditflow verify for the details and what to do", Result: &res}, nil
	}
	return verifyOut{Recorded: true, Note: "the store matched the stream up to sequence " + strconv.FormatUint(res.LastSeq, 10), Result: &res}, nil
}

func (s *Server) openAPI(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(openAPIDoc)
}
