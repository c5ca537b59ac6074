package docs_test

// The docs' tests: links and anchors resolve, the examples marked
// <!-- run --> run, the other shell examples name commands and flags that
// exist, docs/cli is what tools/gendocs writes, and shell completion works.
// The audit bundle's schemas are checked in bundleschema_test.go.
// The conventions are in README.md in this directory.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/auditflow/auditflow/internal/clidoc"
)

var bin string // the directory of runner, projector and auditflow, built from this repository

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "auditflow-docs-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	build := exec.Command("go", "build", "-o", dir+string(filepath.Separator), "./cmd/runner", "./cmd/projector", "./cmd/auditflow")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building the commands: %v\n%s", err, out)
		os.Exit(1)
	}
	bin = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// page is a Markdown file: its headings' anchors, its links and its
// shell blocks.
type page struct {
	path    string // relative to the repository's root
	anchors map[string]bool
	links   []link
	blocks  []block
}

type link struct {
	line   int
	target string
}

// block is a fenced ```sh block.
type block struct {
	path string
	line int
	text string
	run  bool // after <!-- run --> or <!-- run: exit N -->
	exit int  // the exit code expected when run
}

var (
	runMark    = regexp.MustCompile(`^<!-- run(?:: exit (\d+))? -->$`)
	inlineCode = regexp.MustCompile("`[^`]*`")
	mdLink     = regexp.MustCompile(`\]\(([^()\s]+)(?:\s+"[^"]*")?\)`)
	headingRe  = regexp.MustCompile(`^(#{1,6})\s+(.*?)\s*#*\s*$`)
	linkText   = regexp.MustCompile(`!?\[([^\]]*)\]\([^)]*\)`)
)

// pages reads README.md and docs/**/*.md, the README first, then the
// pages in path order.
func pages(t *testing.T) []*page {
	t.Helper()
	paths := []string{"README.md"}
	err := filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".md") {
			paths = append(paths, filepath.ToSlash(filepath.Join("docs", p)))
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(paths[1:])
	var out []*page
	for _, p := range paths {
		out = append(out, parse(t, p))
	}
	return out
}

func parse(t *testing.T, path string) *page {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", filepath.FromSlash(path)))
	if err != nil {
		t.Fatal(err)
	}
	pg := &page{path: path, anchors: map[string]bool{}}
	seen := map[string]int{}
	var (
		fence   string // the open fence's marker, "" outside one
		cur     *block
		prev    string // the last non-blank line outside a fence
		lineNum int
	)
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 1<<20), 1<<20)
	for sc.Scan() {
		lineNum++
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		if fence != "" {
			if strings.HasPrefix(trimmed, fence) && strings.Trim(trimmed, fence[:1]) == "" {
				if cur != nil {
					pg.blocks = append(pg.blocks, *cur)
				}
				fence, cur = "", nil
				continue
			}
			if cur != nil {
				cur.text += line + "\n"
			}
			continue
		}
		if strings.HasPrefix(trimmed, "```") || strings.HasPrefix(trimmed, "~~~") {
			fence = trimmed[:3]
			if tag := strings.TrimSpace(strings.TrimLeft(trimmed, "`~")); tag == "sh" {
				cur = &block{path: path, line: lineNum}
				if m := runMark.FindStringSubmatch(prev); m != nil {
					cur.run = true
					cur.exit, _ = strconv.Atoi(m[1])
				}
			}
			prev = trimmed
			continue
		}
		if trimmed != "" {
			prev = trimmed
		}
		if m := headingRe.FindStringSubmatch(line); m != nil {
			slug := slugify(m[2])
			if n := seen[slug]; n > 0 {
				pg.anchors[slug+"-"+strconv.Itoa(n)] = true
			} else {
				pg.anchors[slug] = true
			}
			seen[slug]++
		}
		for _, m := range mdLink.FindAllStringSubmatch(inlineCode.ReplaceAllString(line, ""), -1) {
			pg.links = append(pg.links, link{lineNum, m[1]})
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if fence != "" {
		t.Errorf("%s: a code block is not closed", path)
	}
	return pg
}

// slugify is GitHub's anchor for a heading: its text, lower case, with
// every character but letters, digits, '-' and '_' dropped and spaces made
// hyphens.
func slugify(heading string) string {
	heading = linkText.ReplaceAllString(heading, "$1")
	var b strings.Builder
	for _, r := range strings.ToLower(heading) {
		switch {
		case unicode.IsLetter(r), unicode.IsDigit(r), r == '-', r == '_':
			b.WriteRune(r)
		case r == ' ':
			b.WriteByte('-')
		}
	}
	return b.String()
}

func TestREADMEIsShort(t *testing.T) {
	data, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(data, []byte("\n")); n > 300 {
		t.Errorf("README.md has %d lines: it is the front door (at most 300); move the detail to a page in docs/", n)
	}
}

// TestLinks: every relative link resolves to a file, and every #anchor to
// a heading of its page.
func TestLinks(t *testing.T) {
	byPath := map[string]*page{}
	all := pages(t)
	for _, pg := range all {
		byPath[pg.path] = pg
	}
	checked := 0
	for _, pg := range all {
		for _, l := range pg.links {
			if regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9+.-]*:`).MatchString(l.target) {
				continue // http:, https:, mailto:
			}
			checked++
			file, anchor, _ := strings.Cut(l.target, "#")
			target := pg.path
			if file != "" {
				target = filepath.ToSlash(filepath.Clean(filepath.Join(filepath.Dir(pg.path), file)))
				if _, err := os.Stat(filepath.Join("..", filepath.FromSlash(target))); err != nil {
					t.Errorf("%s:%d: link %q: %s does not exist", pg.path, l.line, l.target, target)
					continue
				}
			}
			if anchor == "" {
				continue
			}
			tp := byPath[target]
			if tp == nil {
				t.Errorf("%s:%d: link %q: an anchor into %s, which is not a page of the docs", pg.path, l.line, l.target, target)
				continue
			}
			if !tp.anchors[anchor] {
				t.Errorf("%s:%d: link %q: %s has no heading #%s", pg.path, l.line, l.target, target, anchor)
			}
		}
	}
	t.Logf("%d relative links checked", checked)
}

// env is the environment the examples run in: the built commands first on
// PATH, and none of the caller's AUDITFLOW_* or AWS_* settings.
func env() []string {
	var out []string
	for _, kv := range os.Environ() {
		name, value, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(name, "AUDITFLOW_"), strings.HasPrefix(name, "AWS_"):
		case name == "PATH":
			out = append(out, "PATH="+bin+string(os.PathListSeparator)+value)
		default:
			out = append(out, kv)
		}
	}
	return out
}

// TestExamplesRun runs the <!-- run --> blocks, in order, in one directory
// holding a copy of examples/.
func TestExamplesRun(t *testing.T) {
	dir := t.TempDir()
	if err := os.CopyFS(filepath.Join(dir, "examples"), os.DirFS("../examples")); err != nil {
		t.Fatal(err)
	}
	ran := 0
	for _, pg := range pages(t) {
		for _, b := range pg.blocks {
			if !b.run {
				continue
			}
			ran++
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			cmd := exec.CommandContext(ctx, "sh", "-e", "-c", b.text)
			cmd.Dir, cmd.Env = dir, env()
			out, err := cmd.CombinedOutput()
			cancel()
			code := 0
			if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatalf("%s:%d: %v", b.path, b.line, err)
			}
			if code != b.exit {
				t.Errorf("%s:%d: exit %d, want %d:\n%s\noutput:\n%s", b.path, b.line, code, b.exit, b.text, out)
			}
		}
	}
	if ran == 0 {
		t.Fatal("no <!-- run --> block: the quickstart is not tested")
	}
	t.Logf("%d blocks run", ran)
}

var binaries = map[string]bool{"auditflow": true, "runner": true, "projector": true}

// commandLines are the auditflow, runner and projector command lines of a
// shell block, each as the binary's name and its arguments.
func commandLines(text string) [][]string {
	text = strings.ReplaceAll(text, "\\\n", " ")
	var out [][]string
	for line := range strings.SplitSeq(text, "\n") {
		words := shellWords(line)
		for i, w := range words {
			if !binaries[w] {
				continue
			}
			if i+1 < len(words) && words[i+1] == w {
				continue // a compose service named like the command: docker compose run auditflow auditflow …
			}
			out = append(out, words[i:])
			break
		}
	}
	return out
}

// shellWords splits a line as sh would, enough for the examples: quotes,
// and the line's end at a comment, a pipe, a redirection or a list.
func shellWords(line string) []string {
	var words []string
	var w strings.Builder
	inWord := false
	var quote rune
	flush := func() {
		if inWord {
			words = append(words, w.String())
		}
		w.Reset()
		inWord = false
	}
	for _, r := range line {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			} else {
				w.WriteRune(r)
			}
		case r == '\'' || r == '"':
			quote, inWord = r, true
		case r == ' ' || r == '\t':
			flush()
		case !inWord && (r == '#' || r == '|' || r == '>' || r == '<' || r == ';' || r == '&'):
			flush()
			return words
		default:
			w.WriteRune(r)
			inWord = true
		}
	}
	flush()
	return words
}

// TestExamplesNameRealFlags: every auditflow, runner and projector command
// line of a block that is not run must be accepted with --help appended,
// and every flag it uses must be in that help.
func TestExamplesNameRealFlags(t *testing.T) {
	dir := t.TempDir() // no .auditflow here: help as in a deployment
	checked := 0
	for _, pg := range pages(t) {
		for _, b := range pg.blocks {
			if b.run {
				continue
			}
			for _, words := range commandLines(b.text) {
				checked++
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				cmd := exec.CommandContext(ctx, filepath.Join(bin, words[0]), append(words[1:], "--help")...)
				cmd.Dir, cmd.Env = dir, env()
				out, err := cmd.CombinedOutput()
				cancel()
				line := strings.Join(words, " ")
				if err != nil {
					t.Errorf("%s:%d: %s --help: %v\n%s", b.path, b.line, line, err, out)
					continue
				}
				for _, w := range words[1:] {
					if !strings.HasPrefix(w, "-") || w == "-" {
						continue
					}
					name, _, _ := strings.Cut(strings.TrimLeft(w, "-"), "=")
					flagInHelp := regexp.MustCompile(`(?m)(^|[\s,\[])--?` + regexp.QuoteMeta(name) + `([\s,=\]]|$)`)
					if !flagInHelp.Match(out) {
						t.Errorf("%s:%d: %s: %s is not in its --help", b.path, b.line, line, w)
					}
				}
			}
		}
	}
	t.Logf("%d command lines checked", checked)
}

// TestCLIReferenceIsCurrent: docs/cli is what tools/gendocs writes.
func TestCLIReferenceIsCurrent(t *testing.T) {
	for _, kv := range os.Environ() {
		if name, value, _ := strings.Cut(kv, "="); strings.HasPrefix(name, "AUDITFLOW_") || strings.HasPrefix(name, "AWS_") {
			t.Setenv(name, value) // restored after the test
			os.Unsetenv(name)
		}
	}
	dir := t.TempDir()
	if err := clidoc.Generate(dir); err != nil {
		t.Fatal(err)
	}
	want := files(t, dir)
	have := files(t, "cli")
	for name, content := range want {
		if h, ok := have[name]; !ok {
			t.Errorf("docs/cli/%s is missing", name)
		} else if h != content {
			t.Errorf("docs/cli/%s is stale", name)
		}
	}
	for name := range have {
		if _, ok := want[name]; !ok {
			t.Errorf("docs/cli/%s documents no command", name)
		}
	}
	if t.Failed() {
		t.Logf("regenerate the CLI reference from the repository's root: %s (or go generate ./docs), and commit it", clidoc.Command)
	}
}

func files(t *testing.T, dir string) map[string]string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = string(data)
	}
	return out
}

// TestCompletion: auditflow completion writes a script for each shell,
// also where embedded data is present.
func TestCompletion(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, ".auditflow", "nats"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, shell := range []string{"bash", "zsh", "fish"} {
		var out, errOut bytes.Buffer
		cmd := exec.Command(filepath.Join(bin, "auditflow"), "completion", shell)
		cmd.Dir, cmd.Env, cmd.Stdout, cmd.Stderr = dir, env(), &out, &errOut
		if err := cmd.Run(); err != nil {
			t.Errorf("auditflow completion %s: %v\n%s", shell, err, errOut.String())
			continue
		}
		if !strings.Contains(out.String(), "auditflow") || out.Len() < 1000 {
			t.Errorf("auditflow completion %s: %d bytes, not a completion script:\n%s", shell, out.Len(), out.String())
		}
	}
}

// TestConfigurationFlagsExist: every flag the configuration reference
// lists is in the help of a command it is listed for — runner, projector,
// or the auditflow CLI (with each store selected, since its help shows the
// selected store's flags only) — and every environment variable it names
// for a flag is in that help too, so the reference and the commands
// cannot drift apart.
func TestConfigurationFlagsExist(t *testing.T) {
	dir := t.TempDir()
	help := func(name string, args ...string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, filepath.Join(bin, name), append(args, "--help")...)
		cmd.Dir, cmd.Env = dir, env()
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v --help: %v\n%s", name, args, err, out)
		}
		return string(out)
	}
	helps := map[string]string{"runner": help("runner"), "projector": help("projector"), "CLI": help("auditflow")}
	for _, store := range []string{"mongo", "dynamodb", "couchbase"} {
		helps["CLI"] += help("auditflow", "--store", store)
		helps["projector"] += help("projector", "--store", store)
	}
	b, err := os.ReadFile("configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	flagRE := regexp.MustCompile("`(--[a-z0-9-]+)`")
	envRE := regexp.MustCompile("`(AUDITFLOW_[A-Z0-9_]+)`")
	scopeRE := regexp.MustCompile(`\(([^)]*)\)\s*$`)
	rows := 0
	for _, line := range strings.Split(string(b), "\n") {
		cells := strings.Split(line, "|")
		if len(cells) < 4 || !strings.Contains(cells[1], "`--") {
			continue
		}
		rows++
		first := strings.TrimSpace(cells[1])
		scope := []string{"runner", "projector", "CLI"}
		if m := scopeRE.FindStringSubmatch(first); m != nil && m[1] != "all" {
			scope = nil
			for _, s := range strings.Split(m[1], ",") {
				switch s = strings.TrimSpace(s); s {
				case "runner", "projector", "CLI":
					scope = append(scope, s)
				case "MongoDB":
					scope = append(scope, "projector", "CLI")
				}
			}
		}
		in := ""
		for _, s := range scope {
			in += helps[s]
		}
		for _, m := range flagRE.FindAllStringSubmatch(first, -1) {
			// The flag package prints -name, cobra --name.
			name := strings.TrimLeft(m[1], "-")
			if !regexp.MustCompile(`(?m)(^|[\s,\[])--?` + regexp.QuoteMeta(name) + `([\s,=\]]|$)`).MatchString(in) {
				t.Errorf("configuration.md lists %s for %v, but no such help has it", m[1], scope)
			}
		}
		for _, m := range envRE.FindAllStringSubmatch(cells[2], -1) {
			if !strings.Contains(in, m[1]) {
				t.Errorf("configuration.md names %s for %s, but the help of %v does not", m[1], first, scope)
			}
		}
	}
	if rows < 20 {
		t.Fatalf("%d flag rows read from configuration.md: the table was not parsed", rows)
	}
	t.Logf("%d rows of flags checked", rows)
}
