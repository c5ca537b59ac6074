package couchbasestore

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/stores"
)

// TestEventDocKeepsEveryField sets every field of a Record (by reflection,
// so a field added later is covered too) and checks it survives the event
// document's JSON.
func TestEventDocKeepsEveryField(t *testing.T) {
	var r stores.Record
	fill(t, reflect.ValueOf(&r).Elem(), "")
	r.Type = events.ExecutionFailed // State() must be known
	r.RowState = ""                 // a writer's record has none: the row stores StateOf
	r.PrevSeq, r.Position = 1<<63-1, 1<<53+1
	var d eventDoc
	roundTrip(t, eventDocOf(r), &d)
	got, err := d.record()
	if err != nil {
		t.Fatal(err)
	}
	want := r
	want.RowState = events.StateOutOfChain // r has a chain verdict
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, want)
	}
}

// TestEventDocWithoutOptionalFields reads an event document lacking every
// field an event may lack.
func TestEventDocWithoutOptionalFields(t *testing.T) {
	old := `{"seq":3,"id":"e1","type":"ExecutionStarted","state":"STARTED","schemaVersion":1,
		"pipeline":"p","changeId":"c","occurredAt":"2026-01-02T03:04:05.000000006Z","recovery":"MANUAL_INTERVENTION"}`
	var d eventDoc
	if err := json.Unmarshal([]byte(old), &d); err != nil {
		t.Fatal(err)
	}
	r, err := d.record()
	if err != nil {
		t.Fatal(err)
	}
	if r.Hash != "" || r.PrevHash != "" || r.PrevSeq != 0 || r.Position != 0 || r.Chain != "" ||
		r.Seq != 3 || r.ID != "e1" || r.RowState != events.StateStarted {
		t.Fatalf("bare document read as %+v", r)
	}
}

func roundTrip(t *testing.T, in, out any) {
	t.Helper()
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, out); err != nil {
		t.Fatal(err)
	}
}

// fill sets every field of v to a distinct non-zero value.
func fill(t *testing.T, v reflect.Value, name string) {
	t.Helper()
	switch v.Interface().(type) {
	case time.Time:
		v.Set(reflect.ValueOf(time.Date(2026, 5, 6, 7, 8, 9, 123456789, time.UTC)))
		return
	case time.Duration:
		v.SetInt(int64(1500 * time.Millisecond))
		return
	}
	switch v.Kind() {
	case reflect.Struct:
		for i := range v.NumField() {
			fill(t, v.Field(i), v.Type().Field(i).Name)
		}
	case reflect.String:
		v.SetString("v-" + name)
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int64:
		v.SetInt(int64(len(name)))
	case reflect.Uint64:
		v.SetUint(1<<60 + uint64(len(name)))
	case reflect.Map:
		v.Set(reflect.ValueOf(map[string]string{"k-" + name: "v"}))
	default:
		t.Fatalf("fill: field %s: kind %s not handled", name, v.Kind())
	}
}
