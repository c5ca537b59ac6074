package docs_test

// The audit bundle's JSON Schemas (docs/schemas) against the real thing:
// bundles that the built auditflow writes validate, every field the Go
// types marshal is named, and the patterns and constants agree with the
// code. The validator below supports exactly the keywords the schemas use
// and refuses any other, so a schema cannot lean on a keyword nobody checks.

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nkeys"
	"go.yaml.in/yaml/v3"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/bundle"
	"github.com/auditflow/auditflow/trust"
)

// The schemas, by file name in docs/schemas.
const (
	lineSchema     = "bundle-events-line.schema.json"
	manifestSchema = "bundle-manifest.schema.json"
	trustSchema    = "trust-list.schema.json"
)

const schemaIDBase = "https://auditflow.dev/schemas/"

// TestBundleMatchesSchemas exports real bundles from the quickstart's data
// — everything, a window with context lines, and an empty one — and
// validates each events.ndjson line, manifest.json and trust.yaml, and
// manifest.sig's form (which docs/audit-bundle.md describes in prose).
func TestBundleMatchesSchemas(t *testing.T) {
	line, manifest, list := loadSchema(t, lineSchema), loadSchema(t, manifestSchema), loadSchema(t, trustSchema)
	dir := t.TempDir()
	if err := os.CopyFS(filepath.Join(dir, "examples"), os.DirFS("../examples")); err != nil {
		t.Fatal(err)
	}
	shell(t, dir, "runner --embedded --changes examples/changes")
	shell(t, dir, "auditflow export --out all.tar.gz")
	all := readBundle(t, filepath.Join(dir, "all.tar.gz"))
	lines := bytes.Split(bytes.TrimSuffix(all[bundle.EventsFile], []byte("\n")), []byte("\n"))
	if len(lines) < 2 {
		t.Fatalf("the quickstart's bundle has %d lines; want at least 2", len(lines))
	}
	// --since the second event's time: the first is context.
	var second bundle.Line
	var event struct{ Time string }
	if err := json.Unmarshal(lines[1], &second); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(second.Data, &event); err != nil || event.Time == "" {
		t.Fatalf("line 2's data is not an event with a time: %v", err)
	}
	shell(t, dir, "auditflow export --out window.tar.gz --pipeline default --since "+event.Time)
	shell(t, dir, "auditflow export --out empty.tar.gz --until 2000-01-01T00:00:00Z")

	sigForm := regexp.MustCompile(`^U[A-D][A-Z2-7]{54} [A-Za-z0-9_-]{86}\n$`)
	contexts := map[string]int{}
	for _, name := range []string{"all.tar.gz", "window.tar.gz", "empty.tar.gz"} {
		files := all
		if name != "all.tar.gz" {
			files = readBundle(t, filepath.Join(dir, name))
		}
		validateJSON(t, name+": "+bundle.ManifestFile, manifest, files[bundle.ManifestFile])
		validateYAML(t, name+": "+bundle.TrustFile, list, files[bundle.TrustFile])
		if !sigForm.Match(files[bundle.SigFile]) {
			t.Errorf("%s: %s is not \"<public key> <signature>\\n\": %q", name, bundle.SigFile, files[bundle.SigFile])
		}
		ev := files[bundle.EventsFile]
		if len(ev) > 0 && !bytes.HasSuffix(ev, []byte("\n")) {
			t.Errorf("%s: %s does not end with a newline", name, bundle.EventsFile)
		}
		for i, l := range bytes.Split(bytes.TrimSuffix(ev, []byte("\n")), []byte("\n")) {
			if len(ev) == 0 {
				break // no lines, not one empty line
			}
			where := fmt.Sprintf("%s: %s line %d", name, bundle.EventsFile, i+1)
			validateJSON(t, where, line, l)
			if bytes.Contains(l, []byte(`"context":true`)) {
				contexts[name]++
			}
		}
	}
	if contexts["window.tar.gz"] == 0 {
		t.Errorf("the --since export has no context line: the test does not cover one")
	}
	if n := len(readBundle(t, filepath.Join(dir, "empty.tar.gz"))[bundle.EventsFile]); n != 0 {
		t.Errorf("the --until 2000 export has %d bytes of events; want none", n)
	}
}

// shell runs script with sh -e in dir, with the built commands first on
// PATH, as the docs' examples run.
func shell(t *testing.T, dir, script string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-e", "-c", script)
	cmd.Dir, cmd.Env = dir, env()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}
}

// readBundle reads a bundle's members by name, as any reader must: their
// order is not part of the format, and the gzip stream may be several
// gzip members (gzip.Reader reads them all unless told otherwise).
func readBundle(t *testing.T, path string) map[string][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	files := map[string][]byte{}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if _, dup := files[h.Name]; dup {
			t.Fatalf("%s: %s twice", path, h.Name)
		}
		if files[h.Name], err = io.ReadAll(tr); err != nil {
			t.Fatalf("%s: %s: %v", path, h.Name, err)
		}
	}
	for _, n := range []string{bundle.EventsFile, bundle.TrustFile, bundle.ManifestFile, bundle.SigFile, bundle.ReportFile} {
		if _, ok := files[n]; !ok {
			t.Fatalf("%s: no %s", path, n)
		}
	}
	return files
}

func validateJSON(t *testing.T, where string, s *schema, b []byte) {
	t.Helper()
	v, err := decodeJSON(b)
	if err != nil {
		t.Errorf("%s: %v", where, err)
		return
	}
	for _, e := range s.validate(v) {
		t.Errorf("%s: %s: %s", where, s.name, e)
	}
}

func validateYAML(t *testing.T, where string, s *schema, b []byte) {
	t.Helper()
	v, err := yamlAsJSON(b)
	if err != nil {
		t.Errorf("%s: %v", where, err)
		return
	}
	for _, e := range s.validate(v) {
		t.Errorf("%s: %s: %s", where, s.name, e)
	}
}

// TestBundleSchemasNameEveryField: every key the Go types marshal, with
// every field set (by reflection, so a field added later is set too), is a
// property of its schema; and a realistic, fully populated value of each
// validates.
func TestBundleSchemasNameEveryField(t *testing.T) {
	line, manifest, list := loadSchema(t, lineSchema), loadSchema(t, manifestSchema), loadSchema(t, trustSchema)
	for _, c := range []struct {
		s *schema
		v any
	}{{line, &bundle.Line{}}, {manifest, &bundle.Manifest{}}} {
		fill(reflect.ValueOf(c.v).Elem())
		b, err := json.Marshal(c.v)
		if err != nil {
			t.Fatal(err)
		}
		v, err := decodeJSON(b)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range c.s.undeclared(v) {
			t.Errorf("%s: %T marshals %s, which the schema does not name", c.s.name, c.v, e)
		}
	}

	// A trust list goes through Marshal (its file type is the trust
	// package's own), with a key whose every field is set.
	var k trust.Key
	fill(reflect.ValueOf(&k).Elem())
	k.Key, k.Name, k.Roles, k.Pipelines = newUserKey(t), "ops-exporter", []trust.Role{trust.RoleRunner, trust.RoleOperator}, []string{"billing", trust.AllPipelines}
	l, err := trust.NewList(k)
	if err != nil {
		t.Fatal(err)
	}
	tl, err := l.WithUnsignedUpTo(41).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	v, err := yamlAsJSON(tl)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range list.undeclared(v) {
		t.Errorf("%s: trust.List.Marshal writes %s, which the schema does not name", list.name, e)
	}
	validateYAML(t, "a full trust list", list, tl)

	key := newUserKey(t)
	full := bundle.Line{Seq: 3, Subject: events.Subject(events.DefaultSubjectPrefix, "billing", "0042 add index"),
		Headers: map[string][]string{trust.Header: {key + " " + strings.Repeat("A", 86)}, "Nats-Msg-Id": {"x"}},
		Data:    []byte(`{"specversion":"1.0"}`), Context: true}
	for _, c := range []struct {
		name string
		v    any
		s    *schema
	}{
		{"a full line", full, line},
		{"a line with no headers and no data", bundle.Line{Seq: 1, Subject: full.Subject}, line},
		{"a full manifest", bundle.Manifest{Format: bundle.Format, Stream: "AUDIT", SubjectPrefix: "audit.exec",
			Filters:  bundle.Filters{Pipeline: "billing", Change: "0042 add index", Since: "24h", Until: "2026-12-01T00:00:00Z"},
			FirstSeq: 1, LastSeq: 3, Events: 2, EventsSHA256: events.Hash([]byte("e")), TrustSHA256: events.Hash(tl),
			Changes: []bundle.Change{{Subject: full.Subject, Pipeline: "billing", ChangeID: "0042 add index", Events: 2, Context: 1,
				FirstSeq: 1, LastSeq: 3, Head: events.Hash(full.Data)}},
			Verify:   bundle.Summary{ChainBreaks: 1, Untrusted: 2, Undecodable: 3},
			Exporter: bundle.Exporter{Key: key, Name: "ops-exporter"}, ExportedAt: time.Now().UTC()}, manifest},
		{"an empty bundle's manifest", bundle.Manifest{Format: bundle.Format, Stream: "AUDIT", SubjectPrefix: "audit.exec",
			EventsSHA256: events.Hash(nil), TrustSHA256: events.Hash(tl), Exporter: bundle.Exporter{Key: key}, ExportedAt: time.Now()}, manifest},
	} {
		b, err := json.Marshal(c.v)
		if err != nil {
			t.Fatal(err)
		}
		validateJSON(t, c.name, c.s, b)
	}
}

func newUserKey(t *testing.T) string {
	t.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// fill sets every settable field of v to a non-zero value, so that
// omitempty fields marshal too.
func fill(v reflect.Value) {
	if v.Type() == reflect.TypeFor[time.Time]() {
		v.Set(reflect.ValueOf(time.Now()))
		return
	}
	switch v.Kind() {
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Field(i).CanSet() {
				fill(v.Field(i))
			}
		}
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		fill(v.Elem())
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 1, 1))
		fill(v.Index(0))
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
		fill(k)
		fill(e)
		m.SetMapIndex(k, e)
		v.Set(m)
	case reflect.String:
		v.SetString("x")
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(1)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(1)
	case reflect.Float32, reflect.Float64:
		v.SetFloat(1)
	}
}

// TestBundleSchemasMatchTheCode: the schemas' constants and patterns are
// the code's, each schema's $id is its published name, docs/audit-bundle.md
// links each one, and a $defs entry that two schemas share is the same in
// both.
func TestBundleSchemasMatchTheCode(t *testing.T) {
	line, manifest, list := loadSchema(t, lineSchema), loadSchema(t, manifestSchema), loadSchema(t, trustSchema)
	all := []*schema{line, manifest, list}

	names, err := filepath.Glob("schemas/*")
	if err != nil {
		t.Fatal(err)
	}
	for i := range names {
		names[i] = filepath.Base(names[i])
	}
	if want := []string{lineSchema, manifestSchema, trustSchema}; !slices.Equal(names, want) {
		t.Errorf("docs/schemas holds %v; this test checks %v", names, want)
	}
	page, err := os.ReadFile("audit-bundle.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range all {
		if id := s.root["$id"]; id != schemaIDBase+s.name {
			t.Errorf("%s: $id %v, want %s", s.name, id, schemaIDBase+s.name)
		}
		if s.root["$schema"] != "https://json-schema.org/draft/2020-12/schema" {
			t.Errorf("%s: $schema %v, want draft 2020-12", s.name, s.root["$schema"])
		}
		if !bytes.Contains(page, []byte("](schemas/"+s.name+")")) {
			t.Errorf("docs/audit-bundle.md does not link schemas/%s", s.name)
		}
	}
	defs := map[string]*schema{}
	for _, s := range all {
		for name, d := range s.defs() {
			if o, ok := defs[name]; ok && !reflect.DeepEqual(o.defs()[name], d) {
				t.Errorf("$defs/%s differs between %s and %s", name, o.name, s.name)
			}
			defs[name] = s
		}
	}

	if c := manifest.prop("format")["const"]; c != bundle.Format {
		t.Errorf("%s: format const %v, want %q", manifest.name, c, bundle.Format)
	}
	keyProps := list.defs()["key"].(map[string]any)["properties"].(map[string]any)
	roles := keyProps["roles"].(map[string]any)["items"].(map[string]any)["enum"]
	if want := []any{string(trust.RoleRunner), string(trust.RoleOperator)}; !reflect.DeepEqual(roles, want) {
		t.Errorf("%s: roles %v, want trust's roles %v", list.name, roles, want)
	}
	if n := keyProps["name"].(map[string]any)["maxLength"]; n != json.Number(fmt.Sprint(trust.MaxNameLen)) {
		t.Errorf("%s: name maxLength %v, want trust.MaxNameLen %d", list.name, n, trust.MaxNameLen)
	}
	if n := keyProps["pipelines"].(map[string]any)["items"].(map[string]any)["maxLength"]; n != json.Number(fmt.Sprint(events.MaxKeyLen)) {
		t.Errorf("%s: pipeline maxLength %v, want events.MaxKeyLen %d", list.name, n, events.MaxKeyLen)
	}

	account, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	accountKey, _ := account.PublicKey()
	for _, c := range []struct {
		s     *schema
		def   string
		value string
		ok    bool
	}{
		{manifest, "hash", events.Hash([]byte("x")), true},
		{manifest, "hash", events.Hash(nil), true},
		{manifest, "hash", strings.ToUpper(events.Hash(nil)), false},
		{manifest, "userKey", newUserKey(t), true},
		{manifest, "userKey", newUserKey(t), true},
		{manifest, "userKey", accountKey, false},
		{line, "subject", events.Subject(events.DefaultSubjectPrefix, "billing", "0001-create"), true},
		{line, "subject", events.Subject(events.DefaultSubjectPrefix, "billing service", ""), true},
		{line, "subject", events.Subject("acme.prod.audit", "a.b*c>d", "ünïcode/100%"), true},
		{line, "subject", events.Subject("x", "p", "c"), true},
		{line, "subject", "audit.exec.default", true}, // prefix audit: the manifest's subjectPrefix tells
		{line, "subject", "audit.exec.default.a%2x", false},
		{line, "subject", "audit.exec.default.a b", false},
		{line, "subject", "audit.exec.default..c", false},
		{line, "subject", "default.c", false},
	} {
		errs := c.s.validateDef(c.def, c.value)
		if ok := len(errs) == 0; ok != c.ok {
			t.Errorf("%s $defs/%s: %q valid %v, want %v %v", c.s.name, c.def, c.value, ok, c.ok, errs)
		}
	}
	pat := regexp.MustCompile(manifest.prop("subjectPrefix")["pattern"].(string))
	for _, p := range []string{events.DefaultSubjectPrefix, "acme.prod.audit", "x"} {
		if !pat.MatchString(p) {
			t.Errorf("%s: subjectPrefix %q does not match", manifest.name, p)
		}
	}
	if pat := regexp.MustCompile(manifest.prop("stream")["pattern"].(string)); !pat.MatchString("AUDIT") || pat.MatchString("a.b") || pat.MatchString(`a\b`) {
		t.Errorf("%s: the stream pattern is wrong", manifest.name)
	}
}

// TestSchemaValidatorRejects: the validator fails where it must — so that
// TestBundleMatchesSchemas passing means something — and refuses a schema
// with a keyword it does not check.
func TestSchemaValidatorRejects(t *testing.T) {
	line, manifest, list := loadSchema(t, lineSchema), loadSchema(t, manifestSchema), loadSchema(t, trustSchema)
	key := newUserKey(t)
	validLine := `{"seq":7,"subject":"audit.exec.default.0001-a","headers":{"Nats-Msg-Id":["x"]},"data":"eyJhIjoxfQ==","context":false}`
	validManifest := `{"format":"auditflow-bundle-v1","stream":"AUDIT","subjectPrefix":"audit.exec","filters":{},
		"firstSeq":7,"lastSeq":7,"events":1,"eventsSha256":"` + events.Hash(nil) + `","trustSha256":"` + events.Hash(nil) + `",
		"changes":[{"subject":"audit.exec.default.0001-a","pipeline":"default","changeId":"0001-a","events":1,"context":0,
		"firstSeq":7,"lastSeq":7,"head":"` + events.Hash(nil) + `"}],
		"verify":{"chainBreaks":0,"untrusted":0,"undecodable":0},"exporter":{"key":"` + key + `"},"exportedAt":"2026-12-07T12:00:00.5Z"}`
	validList := "unsignedUpToSeq: 3\nkeys:\n  - key: " + key + "\n    name: ops\n    roles: [runner, operator]\n    pipelines: ['*']\n    revokedAfterSeq: 9\n"

	cases := []struct {
		name   string
		s      *schema
		doc    string
		yaml   bool
		change func(map[string]any)
		want   string // in an error; "" for valid
	}{
		{"line as is", line, validLine, false, nil, ""},
		{"line missing a field", line, validLine, false, func(m map[string]any) { delete(m, "context") }, `/: "context" is required`},
		{"line with an extra field", line, validLine, false, func(m map[string]any) { m["verdict"] = "ok" }, `/verdict: not allowed`},
		{"line seq as text", line, validLine, false, func(m map[string]any) { m["seq"] = "7" }, `/seq: string, want integer`},
		{"line seq fractional", line, validLine, false, func(m map[string]any) { m["seq"] = json.Number("7.5") }, `/seq: number, want integer`},
		{"line seq 0", line, validLine, false, func(m map[string]any) { m["seq"] = json.Number("0") }, `/seq: 0 is less than 1`},
		{"line data not base64", line, validLine, false, func(m map[string]any) { m["data"] = "eyJhIjoxfQ" }, `/data: does not match`},
		{"line data not canonical", line, validLine, false, func(m map[string]any) { m["data"] = "eyJhIjoxfR==" }, `/data: not base64`},
		{"line subject not encoded", line, validLine, false, func(m map[string]any) { m["subject"] = "audit.exec.default.0001 a" }, `/subject: does not match`},
		{"line header not a list", line, validLine, false, func(m map[string]any) { m["headers"] = map[string]any{"A": "b"} }, `/headers/A: string, want array`},
		{"manifest as is", manifest, validManifest, false, nil, ""},
		{"manifest hash not hex", manifest, validManifest, false, func(m map[string]any) { m["eventsSha256"] = "sha256:" + strings.Repeat("g", 64) }, `/eventsSha256: does not match`},
		{"manifest hash short", manifest, validManifest, false, func(m map[string]any) { m["trustSha256"] = "sha256:abc" }, `/trustSha256: does not match`},
		{"manifest other format", manifest, validManifest, false, func(m map[string]any) { m["format"] = "auditflow-bundle-v2" }, `/format: is not "auditflow-bundle-v1"`},
		{"manifest time not RFC 3339", manifest, validManifest, false, func(m map[string]any) { m["exportedAt"] = "2026-12-07 12:00" }, `/exportedAt: not an RFC 3339 date-time`},
		{"manifest change without head", manifest, validManifest, false, func(m map[string]any) { delete(m["changes"].([]any)[0].(map[string]any), "head") }, `/changes/0: "head" is required`},
		{"manifest unknown filter", manifest, validManifest, false, func(m map[string]any) { m["filters"].(map[string]any)["type"] = "x" }, `/filters/type: not allowed`},
		{"manifest exporter not a user key", manifest, validManifest, false, func(m map[string]any) { m["exporter"].(map[string]any)["key"] = "S" + key[1:] }, `/exporter/key: does not match`},
		{"trust list as is", list, validList, true, nil, ""},
		{"trust list unknown role", list, validList, true, func(m map[string]any) { m["keys"].([]any)[0].(map[string]any)["roles"] = []any{"admin"} }, `/keys/0/roles/0: not one of`},
		{"trust list misspelt field", list, validList, true, func(m map[string]any) { m["keys"].([]any)[0].(map[string]any)["revokedAfterSequence"] = 9 }, `/keys/0/revokedAfterSequence: not allowed`},
		{"trust list without keys", list, validList, true, func(m map[string]any) { m["keys"] = []any{} }, `/keys: 0 items, want at least 1`},
		{"trust list without pipelines", list, validList, true, func(m map[string]any) { delete(m["keys"].([]any)[0].(map[string]any), "pipelines") }, `/keys/0: "pipelines" is required`},
		{"trust list long name", list, validList, true, func(m map[string]any) { m["keys"].([]any)[0].(map[string]any)["name"] = strings.Repeat("n", 129) }, `/keys/0/name: 129 characters, want at most 128`},
		{"trust list empty name", list, validList, true, func(m map[string]any) { m["keys"].([]any)[0].(map[string]any)["name"] = "" }, `/keys/0/name: 0 characters, want at least 1`},
	}
	for _, c := range cases {
		var v any
		var err error
		if c.yaml {
			v, err = yamlAsJSON([]byte(c.doc))
		} else {
			v, err = decodeJSON([]byte(c.doc))
		}
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if c.change != nil {
			c.change(v.(map[string]any))
			// Through JSON again, so that values set above are as a decoder makes them.
			b, err := json.Marshal(v)
			if err != nil {
				t.Fatal(err)
			}
			if v, err = decodeJSON(b); err != nil {
				t.Fatal(err)
			}
		}
		errs := c.s.validate(v)
		switch {
		case c.want == "" && len(errs) > 0:
			t.Errorf("%s: rejected: %v", c.name, errs)
		case c.want != "" && !slices.ContainsFunc(errs, func(e string) bool { return strings.Contains(e, c.want) }):
			t.Errorf("%s: errors %q, want one with %q", c.name, errs, c.want)
		}
	}

	for _, bad := range []string{
		`{"type":"object","maxProperties":3}`,
		`{"type":"object","properties":{"a":{"oneOf":[{"type":"string"}]}}}`,
		`{"$ref":"other.json#/$defs/x"}`,
		`{"$ref":"#/$defs/missing"}`,
		`{"type":"string","format":"email"}`,
		`{"type":"text"}`,
		`{"type":"string","pattern":"a(?=b)"}`,
		`{"properties":{"a":{"$defs":{}}}}`,
	} {
		if _, err := compileSchema("bad", []byte(bad)); err == nil {
			t.Errorf("schema %s: accepted; want an error", bad)
		}
	}
}

// schema is a JSON Schema (draft 2020-12) restricted to the keywords
// below, which validate checks as the specification says; compileSchema
// refuses any other keyword.
type schema struct {
	name string
	root map[string]any
}

var (
	rootKeywords   = []string{"$schema", "$id", "$defs"}
	schemaKeywords = []string{"title", "description", "$ref", "type", "const", "enum",
		"properties", "required", "additionalProperties", "items", "minItems",
		"pattern", "minLength", "maxLength", "format", "contentEncoding", "minimum"}
	types = []string{"object", "array", "string", "integer", "number", "boolean", "null"}
)

func loadSchema(t *testing.T, name string) *schema {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("schemas", name))
	if err != nil {
		t.Fatal(err)
	}
	s, err := compileSchema(name, b)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func compileSchema(name string, b []byte) (*schema, error) {
	v, err := decodeJSON(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	root, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%s: not an object", name)
	}
	s := &schema{name: name, root: root}
	if err := s.check(root, "#", true); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return s, nil
}

func (s *schema) defs() map[string]any {
	d, _ := s.root["$defs"].(map[string]any)
	return d
}

func (s *schema) prop(name string) map[string]any {
	return s.root["properties"].(map[string]any)[name].(map[string]any)
}

// check checks a (sub)schema's keywords and their values.
func (s *schema) check(v any, at string, root bool) error {
	node, ok := v.(map[string]any)
	if !ok {
		return fmt.Errorf("%s: a schema must be an object", at)
	}
	for kw, val := range node {
		where := at + "/" + kw
		if !slices.Contains(schemaKeywords, kw) && !(root && slices.Contains(rootKeywords, kw)) {
			return fmt.Errorf("%s: keyword %s is not supported by this test's validator", at, kw)
		}
		var err error
		switch kw {
		case "$schema", "$id", "title", "description":
			if _, ok := val.(string); !ok {
				err = fmt.Errorf("%s: not a string", where)
			}
		case "$defs", "properties":
			m, ok := val.(map[string]any)
			if !ok {
				return fmt.Errorf("%s: not an object", where)
			}
			for k, sub := range m {
				if err := s.check(sub, where+"/"+k, false); err != nil {
					return err
				}
			}
		case "$ref":
			r, _ := val.(string)
			name, ok := strings.CutPrefix(r, "#/$defs/")
			if _, found := s.defs()[name]; !ok || !found {
				err = fmt.Errorf("%s: %q is not one of this schema's $defs", where, val)
			}
		case "type":
			names, ok := val.([]any)
			if !ok {
				names = []any{val}
			}
			for _, n := range names {
				if n, _ := n.(string); !slices.Contains(types, n) {
					err = fmt.Errorf("%s: %v is not a type", where, val)
				}
			}
		case "enum":
			if _, ok := val.([]any); !ok {
				err = fmt.Errorf("%s: not an array", where)
			}
		case "required":
			list, ok := val.([]any)
			for _, r := range list {
				if _, isString := r.(string); !isString {
					ok = false
				}
			}
			if !ok {
				err = fmt.Errorf("%s: not an array of names", where)
			}
		case "additionalProperties":
			if _, ok := val.(bool); !ok {
				err = s.check(val, where, false)
			}
		case "items":
			err = s.check(val, where, false)
		case "pattern":
			p, _ := val.(string)
			if _, cerr := regexp.Compile(p); cerr != nil || p == "" {
				err = fmt.Errorf("%s: %q: not a pattern (RE2, which shares this syntax with ECMA-262)", where, val)
			}
		case "minimum":
			if _, ok := number(val); !ok {
				err = fmt.Errorf("%s: not a number", where)
			}
		case "minLength", "maxLength", "minItems":
			if n, ok := number(val); !ok || !n.IsInt() || n.Sign() < 0 {
				err = fmt.Errorf("%s: not a non-negative integer", where)
			}
		case "format":
			if val != "date-time" {
				err = fmt.Errorf("%s: format %v is not supported (only date-time)", where, val)
			}
		case "contentEncoding":
			if val != "base64" {
				err = fmt.Errorf("%s: content encoding %v is not supported (only base64)", where, val)
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (s *schema) validate(v any) []string { return s.validateAt(s.root, v, "") }

func (s *schema) validateDef(name string, v any) []string {
	return s.validateAt(s.defs()[name].(map[string]any), v, "")
}

// validateAt validates v, found at path (a JSON pointer), against node.
func (s *schema) validateAt(node map[string]any, v any, path string) []string {
	var errs []string
	fail := func(format string, args ...any) {
		p := path
		if p == "" {
			p = "/"
		}
		errs = append(errs, p+": "+fmt.Sprintf(format, args...))
	}
	if r, ok := node["$ref"].(string); ok {
		errs = append(errs, s.validateAt(s.defs()[strings.TrimPrefix(r, "#/$defs/")].(map[string]any), v, path)...)
	}
	if t, ok := node["type"]; ok {
		names, ok := t.([]any)
		if !ok {
			names = []any{t}
		}
		if !slices.ContainsFunc(names, func(n any) bool { return isType(v, n.(string)) }) {
			fail("%s, want %v", typeName(v), t)
			return errs
		}
	}
	if c, ok := node["const"]; ok && !equal(v, c) {
		fail("is not %s", mustJSON(c))
	}
	if e, ok := node["enum"].([]any); ok && !slices.ContainsFunc(e, func(c any) bool { return equal(v, c) }) {
		fail("not one of %s", mustJSON(e))
	}
	switch v := v.(type) {
	case string:
		n := big.NewRat(int64(utf8.RuneCountInString(v)), 1)
		if m, ok := number(node["minLength"]); ok && n.Cmp(m) < 0 {
			fail("%s characters, want at least %s", n.RatString(), m.RatString())
		}
		if m, ok := number(node["maxLength"]); ok && n.Cmp(m) > 0 {
			fail("%s characters, want at most %s", n.RatString(), m.RatString())
		}
		if p, ok := node["pattern"].(string); ok && !regexp.MustCompile(p).MatchString(v) {
			fail("does not match %s", p)
		}
		if node["format"] == "date-time" {
			if _, err := time.Parse(time.RFC3339Nano, v); err != nil {
				fail("not an RFC 3339 date-time: %v", err)
			}
		}
		if node["contentEncoding"] == "base64" {
			if _, err := base64.StdEncoding.Strict().DecodeString(v); err != nil {
				fail("not base64: %v", err)
			}
		}
	case json.Number:
		n, _ := number(v)
		if m, ok := number(node["minimum"]); ok && n.Cmp(m) < 0 {
			fail("%s is less than %s", v, m.RatString())
		}
	case []any:
		if m, ok := number(node["minItems"]); ok && big.NewRat(int64(len(v)), 1).Cmp(m) < 0 {
			fail("%d items, want at least %s", len(v), m.RatString())
		}
		if items, ok := node["items"].(map[string]any); ok {
			for i, e := range v {
				errs = append(errs, s.validateAt(items, e, fmt.Sprintf("%s/%d", path, i))...)
			}
		}
	case map[string]any:
		for _, r := range anys(node["required"]) {
			if _, ok := v[r.(string)]; !ok {
				fail("%q is required", r)
			}
		}
		props, _ := node["properties"].(map[string]any)
		for _, k := range sortedKeys(v) {
			at := path + "/" + strings.ReplaceAll(strings.ReplaceAll(k, "~", "~0"), "/", "~1")
			if p, ok := props[k]; ok {
				errs = append(errs, s.validateAt(p.(map[string]any), v[k], at)...)
				continue
			}
			switch ap := node["additionalProperties"].(type) {
			case bool:
				if !ap {
					errs = append(errs, at+": not allowed (not a property of the schema)")
				}
			case map[string]any:
				errs = append(errs, s.validateAt(ap, v[k], at)...)
			}
		}
	}
	return errs
}

// undeclared lists the object keys in v that the schema does not name as
// properties (a key of a map, where additionalProperties is a schema, is
// not one).
func (s *schema) undeclared(v any) []string { return s.undeclaredAt(s.root, v, "") }

func (s *schema) undeclaredAt(node map[string]any, v any, path string) []string {
	if r, ok := node["$ref"].(string); ok {
		node = s.defs()[strings.TrimPrefix(r, "#/$defs/")].(map[string]any)
	}
	var out []string
	switch v := v.(type) {
	case []any:
		if items, ok := node["items"].(map[string]any); ok {
			for i, e := range v {
				out = append(out, s.undeclaredAt(items, e, fmt.Sprintf("%s/%d", path, i))...)
			}
		}
	case map[string]any:
		props, _ := node["properties"].(map[string]any)
		for _, k := range sortedKeys(v) {
			if p, ok := props[k]; ok {
				out = append(out, s.undeclaredAt(p.(map[string]any), v[k], path+"/"+k)...)
			} else if ap, ok := node["additionalProperties"].(map[string]any); ok {
				out = append(out, s.undeclaredAt(ap, v[k], path+"/"+k)...)
			} else {
				out = append(out, path+"/"+k)
			}
		}
	}
	return out
}

// decodeJSON decodes one JSON document, numbers as json.Number.
func decodeJSON(b []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("more than one JSON value")
	}
	return v, nil
}

// yamlAsJSON reads YAML as the JSON document of the same data.
func yamlAsJSON(b []byte) (any, error) {
	var v any
	if err := yaml.Unmarshal(b, &v); err != nil {
		return nil, err
	}
	j, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("YAML that is not JSON's data model: %w", err)
	}
	return decodeJSON(j)
}

func number(v any) (*big.Rat, bool) {
	n, ok := v.(json.Number)
	if !ok {
		return nil, false
	}
	return new(big.Rat).SetString(string(n))
}

func isType(v any, t string) bool {
	switch t {
	case "integer":
		n, ok := number(v)
		return ok && n.IsInt()
	case "number":
		_, ok := number(v)
		return ok
	}
	return typeName(v) == t
}

func typeName(v any) string {
	switch v := v.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case string:
		return "string"
	case json.Number:
		if n, ok := number(v); ok && n.IsInt() {
			return "integer"
		}
		return "number"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	}
	return fmt.Sprintf("%T", v)
}

// equal is JSON equality: numbers by value.
func equal(a, b any) bool {
	if x, ok := number(a); ok {
		y, ok := number(b)
		return ok && x.Cmp(y) == 0
	}
	switch a := a.(type) {
	case []any:
		b, ok := b.([]any)
		return ok && slices.EqualFunc(a, b, equal)
	case map[string]any:
		b, ok := b.(map[string]any)
		if !ok || len(a) != len(b) {
			return false
		}
		for k, v := range a {
			if w, ok := b[k]; !ok || !equal(v, w) {
				return false
			}
		}
		return true
	}
	return a == b
}

func anys(v any) []any {
	a, _ := v.([]any)
	return a
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
