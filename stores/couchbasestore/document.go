package couchbasestore

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"time"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/stores"
)

// Layout constants. They are part of the stored format (see doc.go): data
// written with other values is unreadable, so they are constants, recorded
// in the meta document as layoutVersion and checked on every call.
const (
	// layoutVersion 2 keys event documents by stream sequence; 1 keyed
	// them by event id, which Reset can still purge (see olderLayout).
	layoutVersion = 2
	olderLayout   = 1
	// segBits: a leaf document covers 2^segBits consecutive sequences, so it
	// holds at most 256 entries of ~160 bytes (~190 at the longest): about
	// 40 KB. Small, because every batch rewrites the leaves it touches.
	segBits = 8
	// pageBits: a page document lists at most 2^pageBits leaves (~40 KB),
	// so a root gains one entry per 2^18 sequences.
	pageBits = 10
	// maxSpecs is the server's limit of operations in one MutateIn.
	maxSpecs = 16
)

// metaKey is the one document outside every generation.
const metaKey = "auditflow:meta"

func segOf(seq uint64) uint64  { return seq >> segBits }
func pageOf(seg uint64) uint64 { return seg >> pageBits }

// digest is a hex prefix of the SHA-256 of parts joined by NUL. Document
// keys use 128 bits (collisions are not a practical concern); index filters
// use 64 (a collision only costs a read: rows are re-checked in full).
func digest(hexLen int, parts ...string) string {
	h := sha256.New()
	for i, p := range parts {
		if i > 0 {
			h.Write([]byte{0})
		}
		h.Write([]byte(p))
	}
	return hex.EncodeToString(h.Sum(nil))[:hexLen]
}

func pipelineHash(pipeline string) string      { return digest(16, "p", pipeline) }
func changeHash(change string) string          { return digest(16, "c", change) }
func issueHash(pipeline, change string) string { return digest(32, "i", pipeline, change) }

// safeKeyPart reports whether s can be used in a document key as is: short,
// printable ASCII that needs no escaping anywhere. Typical checkpoint names
// are; anything else is hashed.
func safeKeyPart(s string) bool {
	if len(s) == 0 || len(s) > events.MaxIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '-' || c == '_' || c == '.' || c == '~' || c == '@' || c == '+' || c == '=':
		default:
			return false
		}
	}
	return true
}

// Index names: the whole changeLog, one pipeline, one state.
const ixAll = "a"

func ixPipeline(ph string) string   { return "p" + ph }
func ixState(s events.State) string { return "s" + string(s) }

// keyspace builds the keys of one generation. Every key but metaKey starts
// with the generation, so Reset can switch to an empty keyspace atomically.
type keyspace struct{ prefix string }

func keyspaceOf(gen uint64) keyspace { return keyspace{prefix: strconv.FormatUint(gen, 10) + ":"} }

// event is the key of the changeLog row at stream sequence seq.
func (k keyspace) event(seq uint64) string { return k.prefix + "e:" + strconv.FormatUint(seq, 10) }
func (k keyspace) issue(ih string) string  { return k.prefix + "i:" + ih }
func (k keyspace) pipelines() string       { return k.prefix + "P" }
func (k keyspace) root(ix string) string   { return k.prefix + "r:" + ix }
func (k keyspace) page(ix string, page uint64) string {
	return k.prefix + "d:" + ix + ":" + strconv.FormatUint(page, 10)
}
func (k keyspace) leaf(ix string, seg uint64) string {
	return k.prefix + "l:" + ix + ":" + strconv.FormatUint(seg, 10)
}

// members is one of the memberBuckets documents listing the issues in a
// tracked status; the issue's hash picks the bucket.
func (k keyspace) members(st stores.IssueStatus, ih string) string {
	return k.prefix + "m:" + string(st) + ":" + ih[:1]
}

func (k keyspace) checkpoint(name string) string {
	if safeKeyPart(name) {
		return k.prefix + "k:" + name
	}
	return k.prefix + "k#" + digest(32, "k", name)
}
func (k keyspace) checkpointDir() string { return k.prefix + "K" }

// memberBuckets: the hash's first hex digit picks one of 16 documents.
const memberBuckets = "0123456789abcdef"

// tracked reports whether issues in status st are listed in member
// documents. OPEN and IN_PROGRESS are the few issues an operator looks
// for; CLOSED is nearly every change and is found by walking the leaves.
func tracked(st stores.IssueStatus) bool {
	return st == stores.IssueOpen || st == stores.IssueInProgress
}

// metaDoc records the layout and the current generation. Reset raises Gen;
// generations below Clean have been purged.
type metaDoc struct {
	Layout int    `json:"layout"`
	Gen    uint64 `json:"gen"`
	Clean  uint64 `json:"clean"`
}

// eventDoc is a changeLog row: one stream message, keyed by its sequence.
type eventDoc struct {
	Seq  uint64      `json:"seq"`
	ID   string      `json:"id"`
	Type events.Type `json:"type"`
	// State is the state the row stores (stores.StateOf), which History
	// returns as Record.RowState and checks its filter against.
	State         events.State      `json:"state"`
	SchemaVersion int               `json:"schemaVersion"`
	Pipeline      string            `json:"pipeline"`
	ChangeID      string            `json:"changeId"`
	Author        string            `json:"author,omitempty"`
	ExecutionID   string            `json:"executionId,omitempty"`
	Order         string            `json:"order,omitempty"`
	TargetSystem  string            `json:"targetSystem,omitempty"`
	Host          string            `json:"host,omitempty"`
	RunnerID      string            `json:"runnerId,omitempty"`
	LockToken     uint64            `json:"lockToken,omitempty,string"` // a string: exact beyond 2^53 for every JSON reader
	OccurredAt    string            `json:"occurredAt"`
	DurationNanos int64             `json:"durationNanos,omitempty"`
	ErrorMessage  string            `json:"errorMessage,omitempty"`
	ErrorTrace    string            `json:"errorTrace,omitempty"`
	Metadata      map[string]string `json:"metadata,omitempty"`
	Recovery      events.Recovery   `json:"recovery"`
	Transactional bool              `json:"transactional,omitempty"`
	Resolution    events.Resolution `json:"resolution,omitempty"`
	Operator      string            `json:"operator,omitempty"`
	Reason        string            `json:"reason,omitempty"`
	// Fields an event may lack (no hash chain, no place in it, no
	// signature, no verdicts) are left out and read as "" and 0. PrevSeq
	// and Position are strings, as LockToken: exact beyond 2^53.
	Hash      string `json:"hash,omitempty"`
	PrevHash  string `json:"prevHash,omitempty"`
	PrevSeq   uint64 `json:"prevSeq,omitempty,string"`
	Position  uint64 `json:"position,omitempty,string"`
	Signer    string `json:"signer,omitempty"`
	Signature string `json:"signature,omitempty"`
	Trust     string `json:"trust,omitempty"`
	Chain     string `json:"chain,omitempty"`
}

func eventDocOf(r stores.Record) eventDoc {
	return eventDoc{
		Seq: r.Seq, ID: r.ID, Type: r.Type, State: stores.StateOf(r), SchemaVersion: r.SchemaVersion,
		Pipeline: r.Pipeline, ChangeID: r.ChangeID, Author: r.Author, ExecutionID: r.ExecutionID,
		Order: r.Order, TargetSystem: r.TargetSystem, Host: r.Host, RunnerID: r.RunnerID,
		LockToken: r.LockToken, OccurredAt: stores.FormatTime(r.OccurredAt), DurationNanos: int64(r.Duration),
		ErrorMessage: r.ErrorMessage, ErrorTrace: r.ErrorTrace, Metadata: r.Metadata, Recovery: r.Recovery,
		Transactional: r.Transactional, Resolution: r.Resolution, Operator: r.Operator, Reason: r.Reason,
		Hash: r.Hash, PrevHash: r.PrevHash, PrevSeq: r.PrevSeq, Position: r.Position,
		Signer: r.Signer, Signature: r.Signature, Trust: r.Trust, Chain: r.Chain,
	}
}

func (d eventDoc) record() (stores.Record, error) {
	at, err := stores.ParseTime(d.OccurredAt)
	if err != nil {
		return stores.Record{}, fmt.Errorf("event %s: bad occurredAt %q: %w", d.ID, d.OccurredAt, err)
	}
	return stores.Record{Seq: d.Seq, Hash: d.Hash, Signer: d.Signer, Signature: d.Signature, Trust: d.Trust,
		Chain: d.Chain, RowState: d.State, Event: events.Event{
			ID: d.ID, Type: d.Type, SchemaVersion: d.SchemaVersion, Pipeline: d.Pipeline, ChangeID: d.ChangeID,
			Author: d.Author, ExecutionID: d.ExecutionID, Order: d.Order, TargetSystem: d.TargetSystem,
			Host: d.Host, RunnerID: d.RunnerID, LockToken: d.LockToken, OccurredAt: at,
			Duration: time.Duration(d.DurationNanos), ErrorMessage: d.ErrorMessage, ErrorTrace: d.ErrorTrace,
			Metadata: d.Metadata, Recovery: d.Recovery, Transactional: d.Transactional,
			Resolution: d.Resolution, Operator: d.Operator, Reason: d.Reason, PrevHash: d.PrevHash,
			PrevSeq: d.PrevSeq, Position: d.Position,
		}}, nil
}

// issueDoc is an issue row plus Segs: the leaves (of the pipeline's index)
// holding this change's events, which is how a change's history is found.
type issueDoc struct {
	Pipeline     string             `json:"pipeline"`
	ChangeID     string             `json:"changeId"`
	Status       stores.IssueStatus `json:"status"`
	State        events.State       `json:"state"`
	Seq          uint64             `json:"seq"`
	EventID      string             `json:"eventId"`
	ExecutionID  string             `json:"executionId,omitempty"`
	Author       string             `json:"author,omitempty"`
	TargetSystem string             `json:"targetSystem,omitempty"`
	Recovery     events.Recovery    `json:"recovery"`
	ErrorMessage string             `json:"errorMessage,omitempty"`
	ErrorTrace   string             `json:"errorTrace,omitempty"`
	UpdatedAt    string             `json:"updatedAt"`
	Operator     string             `json:"operator,omitempty"`
	Reason       string             `json:"reason,omitempty"`
	Trust        string             `json:"trust,omitempty"`
	Chain        string             `json:"chain,omitempty"`
	Segs         []uint64           `json:"segs"`
}

func issueDocOf(r stores.Record, segs []uint64) issueDoc {
	i := stores.IssueOf(r)
	return issueDoc{
		Pipeline: i.Pipeline, ChangeID: i.ChangeID, Status: i.Status, State: i.State, Seq: i.Seq,
		EventID: i.EventID, ExecutionID: i.ExecutionID, Author: i.Author, TargetSystem: i.TargetSystem,
		Recovery: i.Recovery, ErrorMessage: i.ErrorMessage, ErrorTrace: i.ErrorTrace,
		UpdatedAt: stores.FormatTime(i.UpdatedAt), Operator: i.Operator, Reason: i.Reason, Trust: i.Trust,
		Chain: i.Chain, Segs: segs,
	}
}

func (d issueDoc) issue() (stores.Issue, error) {
	at, err := stores.ParseTime(d.UpdatedAt)
	if err != nil {
		return stores.Issue{}, fmt.Errorf("issue %s/%s: bad updatedAt %q: %w", d.Pipeline, d.ChangeID, d.UpdatedAt, err)
	}
	return stores.Issue{
		Pipeline: d.Pipeline, ChangeID: d.ChangeID, Status: d.Status, State: d.State, Seq: d.Seq,
		EventID: d.EventID, ExecutionID: d.ExecutionID, Author: d.Author, TargetSystem: d.TargetSystem,
		Recovery: d.Recovery, ErrorMessage: d.ErrorMessage, ErrorTrace: d.ErrorTrace, UpdatedAt: at,
		Operator: d.Operator, Reason: d.Reason, Trust: d.Trust, Chain: d.Chain,
	}, nil
}

// entry is one event in a leaf, under its sequence: enough to filter on
// without reading the event (whose key the sequence gives), and the key of
// its issue. Hashes, not names, keep entries small and bounded. It is a
// copy of the row's values that only narrows a listing: every row is read
// and checked against the query, so an entry that disagrees with its row
// can leave the row out of a listing, never show it under a value it does
// not hold.
type entry struct {
	// Ref is the event's key without its generation in layout 1, which
	// keyed events by id; Reset reads it to purge such a generation.
	// Layout 2 entries leave it out.
	Ref      string       `json:"r,omitempty"`
	Issue    string       `json:"i"` // issueHash
	Pipeline string       `json:"p"` // pipelineHash
	Change   string       `json:"c"` // changeHash
	State    events.State `json:"s"` // the state the row stores (stores.StateOf)
	At       string       `json:"t"` // OccurredAt in stores.TimeLayout
	// Untrusted: the event has a trust verdict (stores.Record.Trust), so
	// its issue is OPEN whatever its state.
	Untrusted bool `json:"u,omitempty"`
}

// entryOf is r's entry in each of its indexes.
func entryOf(r stores.Record) entry {
	return entry{
		Issue: issueHash(r.Pipeline, r.ChangeID), Pipeline: pipelineHash(r.Pipeline), Change: changeHash(r.ChangeID),
		State: stores.StateOf(r), At: stores.FormatTime(r.OccurredAt), Untrusted: r.Trust != "",
	}
}

// indexesOf names the indexes r's entry goes in: the whole log, its
// pipeline's and its stored state's.
func indexesOf(r stores.Record) []string {
	return []string{ixAll, ixPipeline(pipelineHash(r.Pipeline)), ixState(stores.StateOf(r))}
}

// status is the issue status the entry's event gives its change.
func (e entry) status() stores.IssueStatus {
	if e.Untrusted {
		return stores.IssueOpen
	}
	return stores.StatusOf(e.State)
}

// leafDoc holds the entries of one index for one segment of sequences,
// keyed by decimal sequence, and X: sequences known to be superseded (no
// longer their change's newest event). Written only by sub-document
// upserts, so numbers that must stay exact are strings.
type leafDoc struct {
	E map[string]entry `json:"e"`
	X map[string]int   `json:"x"`
}

// pageDoc lists the leaves of one index in one page of segments, each with
// the latest OccurredAt in it, so that Since queries skip older leaves.
type pageDoc struct {
	S map[string]string `json:"s"`
}

// rootDoc lists the pages of one index.
type rootDoc struct {
	P map[string]int `json:"p"`
}

// membersDoc lists issues in one tracked status (one bucket of them): issue
// hash → the highest sequence at which a writer put it in that status.
type membersDoc struct {
	M map[string]member `json:"m"`
}

type member struct {
	Seq      uint64 `json:"q"`
	Pipeline string `json:"p"` // pipelineHash
}

// pipelinesDoc lists every pipeline with events (pipeline hash → name):
// the issues a change id alone can have, and the pipeline indexes Reset
// purges. One entry per pipeline, ~300 bytes at most: room for ~60,000.
type pipelinesDoc struct {
	P map[string]string `json:"p"`
}

type checkpointDoc struct {
	Name string `json:"name"`
	Seq  uint64 `json:"seq"`
}

// checkpointDirDoc lists checkpoint names, so Reset can find them.
type checkpointDirDoc struct {
	N map[string]string `json:"n"`
}
