package console

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/render"
	"github.com/auditflow/auditflow/stores"
)

//go:embed assets
var assets embed.FS

// openAPIDoc is served at /api/v1/openapi.json.
//
//go:embed assets/openapi.json
var openAPIDoc []byte

type pages struct {
	t map[string]*template.Template
}

var pageFuncs = template.FuncMap{
	"time": func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.UTC().Format(render.TimeLayout)
	},
	"dash": render.Dash,
	"clip": render.Clip,
	"changeURL": func(pipeline, change string) string {
		return "/changes/" + url.PathEscape(pipeline) + "/" + url.PathEscape(change)
	},
	"ms":          func(ms int64) string { return (time.Duration(ms) * time.Millisecond).String() },
	"lower":       func(s any) string { return strings.ToLower(fmt.Sprint(s)) },
	"until":       func(t time.Time) string { return time.Until(t).Round(time.Second).String() },
	"hasDuration": func(t events.Type) bool { return t != events.ExecutionStarted && t != events.ManuallyResolved },
}

func loadPages() (*pages, error) {
	p := &pages{t: map[string]*template.Template{}}
	for _, name := range []string{"overview", "change", "issues", "locks", "deadletters", "lag", "login", "status"} {
		t, err := template.New(name).Funcs(pageFuncs).ParseFS(assets, "assets/templates/layout.html", "assets/templates/"+name+".html")
		if err != nil {
			return nil, fmt.Errorf("console: template %s: %w", name, err)
		}
		p.t[name] = t
	}
	return p, nil
}

// view is what every page's layout needs.
type view struct {
	Title string
	Nav   string
	Data  any
}

// render executes a page into a buffer first, so that a failure is a
// clean 500 and never half a page.
func (s *Server) render(w http.ResponseWriter, status int, name string, v view) {
	var b bytes.Buffer
	if err := s.pages.t[name].ExecuteTemplate(&b, "layout", v); err != nil {
		s.log.Warn("console: render", "page", name, "err", err)
		http.Error(w, "render failed", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(b.Bytes())
}

// show renders page name with v, or the page of err.
func (s *Server) show(w http.ResponseWriter, r *http.Request, name string, v view, err error) {
	if err != nil {
		s.pageError(w, r, err)
		return
	}
	s.render(w, http.StatusOK, name, v)
}

func (s *Server) renderStatus(w http.ResponseWriter, status int, msg string) {
	s.render(w, status, "status", view{Title: http.StatusText(status), Data: msg})
}

func (s *Server) pageError(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, errNoChange):
		s.renderStatus(w, http.StatusNotFound, err.Error())
	case errors.Is(err, stores.ErrInvalidQuery), errors.As(err, new(badRequest)):
		s.renderStatus(w, http.StatusBadRequest, err.Error())
	case r.Context().Err() != nil:
	default:
		s.log.Warn("console: page failed", "path", r.URL.Path, "err", err)
		s.renderStatus(w, http.StatusInternalServerError, err.Error())
	}
}

func urlQueryEscape(s string) string { return url.QueryEscape(s) }

func (s *Server) pageRoutes() {
	m := s.mux
	static, _ := fs.Sub(assets, "assets/static")
	m.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	m.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	m.HandleFunc("GET /login", s.loginForm)
	m.HandleFunc("POST /login", s.login)
	m.HandleFunc("POST /logout", s.logout)
	m.HandleFunc("GET /{$}", s.page(s.overviewPage))
	m.HandleFunc("GET /changes/{pipeline}/{change}", s.page(s.changePage))
	m.HandleFunc("GET /issues", s.page(s.issuesPage))
	m.HandleFunc("GET /locks", s.page(s.locksPage))
	m.HandleFunc("GET /deadletters", s.page(s.deadLettersPage))
	m.HandleFunc("GET /lag", s.page(s.lagPage))
	m.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		s.renderStatus(w, http.StatusNotFound, "no such page")
	})
}

type overviewData struct {
	Filters  filters
	States   []events.State
	Changes  changesOut
	Counts   []pipelineCount
	OlderURL string
}

// pipelineCount is one pipeline's changes by state, on the page shown.
type pipelineCount struct {
	Pipeline string
	States   []stateCount
}

type stateCount struct {
	State events.State
	N     int
}

func (s *Server) overviewPage(w http.ResponseWriter, r *http.Request) {
	f, err := parseFilters(r.URL.Query())
	if err != nil {
		s.pageError(w, r, err)
		return
	}
	if r.URL.Query().Get("limit") == "" {
		f.Limit = 200
	}
	out, err := s.changes(r.Context(), f)
	if err != nil {
		s.pageError(w, r, err)
		return
	}
	d := overviewData{Filters: f, States: events.States, Changes: out}
	idx := map[string]int{}
	for _, c := range out.Changes {
		i, ok := idx[c.Pipeline]
		if !ok {
			i = len(d.Counts)
			idx[c.Pipeline] = i
			d.Counts = append(d.Counts, pipelineCount{Pipeline: c.Pipeline})
		}
		pc := &d.Counts[i]
		found := false
		for j := range pc.States {
			if pc.States[j].State == c.State {
				pc.States[j].N++
				found = true
			}
		}
		if !found {
			pc.States = append(pc.States, stateCount{State: c.State, N: 1})
		}
	}
	if out.NextBeforeSeq != 0 {
		d.OlderURL = olderURL(r, "/", out.NextBeforeSeq)
	}
	s.render(w, http.StatusOK, "overview", view{Title: "Pipelines", Nav: "overview", Data: d})
}

// olderURL is the page's own URL for the rows below cursor.
func olderURL(r *http.Request, path string, cursor uint64) string {
	q := r.URL.Query()
	q.Set("beforeSeq", strconv.FormatUint(cursor, 10))
	return path + "?" + q.Encode()
}

type issuesData struct {
	issuesOut
	OlderURL string
}

func (s *Server) changePage(w http.ResponseWriter, r *http.Request) {
	out, err := s.change(r.Context(), r.PathValue("pipeline"), r.PathValue("change"))
	s.show(w, r, "change", view{Title: out.Change.ChangeID, Nav: "overview", Data: out}, err)
}

func (s *Server) issuesPage(w http.ResponseWriter, r *http.Request) {
	f, err := parseFilters(r.URL.Query())
	var d issuesData
	if err == nil {
		d.issuesOut, err = s.issues(r.Context(), f)
	}
	if d.NextBeforeSeq != 0 {
		d.OlderURL = olderURL(r, "/issues", d.NextBeforeSeq)
	}
	s.show(w, r, "issues", view{Title: "Open issues", Nav: "issues", Data: d}, err)
}

func (s *Server) locksPage(w http.ResponseWriter, r *http.Request) {
	out, err := s.locks(r.Context())
	s.show(w, r, "locks", view{Title: "Locks", Nav: "locks", Data: out}, err)
}

func (s *Server) deadLettersPage(w http.ResponseWriter, r *http.Request) {
	out, err := s.deadLetters(r.Context(), 0, maxPage)
	s.show(w, r, "deadletters", view{Title: "Dead letters", Nav: "deadletters", Data: out}, err)
}

// lagChart is the lag view's SVG, computed here so the template only
// places numbers.
type lagChart struct {
	Stats  statsOut
	Verify verifyOut
	Points string // polyline points, "x,y x,y …"
	Max    uint64
	From   time.Time
	To     time.Time
	N      int
}

const chartW, chartH = 600.0, 200.0

func (s *Server) lagPage(w http.ResponseWriter, r *http.Request) {
	st, err := s.stats(r.Context(), time.Now().Add(-time.Hour))
	if err != nil {
		s.pageError(w, r, err)
		return
	}
	if st.Lag != nil { // the stats just read it: the chart's newest sample
		s.addLagSample(st.Lag)
	}
	d := lagChart{Stats: st}
	if d.Verify, err = s.lastVerify(r.Context()); err != nil {
		d.Verify.Note = "the last verify result could not be read: " + err.Error()
	}
	samples := s.lag.all()
	d.N = len(samples)
	if len(samples) > 0 {
		d.From, d.To = samples[0].At, samples[len(samples)-1].At
		for _, x := range samples {
			d.Max = max(d.Max, x.Behind)
		}
		span := d.To.Sub(d.From).Seconds()
		var pts []string
		for _, x := range samples {
			px := 0.0
			if span > 0 {
				px = x.At.Sub(d.From).Seconds() / span * chartW
			}
			py := chartH - float64(x.Behind)/float64(max(d.Max, 1))*chartH
			pts = append(pts, strconv.FormatFloat(px, 'f', 1, 64)+","+strconv.FormatFloat(py, 'f', 1, 64))
		}
		d.Points = strings.Join(pts, " ")
	}
	s.render(w, http.StatusOK, "lag", view{Title: "Projector lag", Nav: "lag", Data: d})
}

func (s *Server) loginForm(w http.ResponseWriter, r *http.Request) {
	s.render(w, http.StatusOK, "login", view{Title: "Sign in", Data: loginData{Next: safeNext(r.URL.Query().Get("next"))}})
}

type loginData struct {
	Next    string
	Problem string
}

// safeNext keeps a post-login redirect on this site.
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.HasPrefix(next, "/\\") {
		return "/"
	}
	return next
}

func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 4096)
	if err := r.ParseForm(); err != nil {
		s.renderStatus(w, http.StatusBadRequest, "bad form")
		return
	}
	next := safeNext(r.PostForm.Get("next"))
	k, ok := match(*s.keys.Load(), strings.TrimSpace(r.PostForm.Get("key")))
	if !ok {
		s.render(w, http.StatusUnauthorized, "login", view{Title: "Sign in", Data: loginData{Next: next, Problem: "That key is not valid."}})
		return
	}
	id, err := s.sessions.add(who{Name: k.Name, Role: k.Role})
	if err != nil {
		s.renderStatus(w, http.StatusInternalServerError, err.Error())
		return
	}
	s.log.Info("console: signed in", "key", k.Name)
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: id, Path: "/", MaxAge: int(sessionTTL.Seconds()),
		HttpOnly: true, Secure: s.cfg.SecureCookies, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (s *Server) logout(w http.ResponseWriter, r *http.Request) {
	if c, err := r.Cookie(sessionCookie); err == nil {
		s.sessions.remove(c.Value)
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, Secure: s.cfg.SecureCookies, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}
