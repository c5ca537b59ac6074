package events

import _ "embed"

// Schema is the JSON Schema (draft 2020-12) of the wire format, for fleets
// that emit events from other languages. It is schema/execution-event.v4.json.
//
//go:embed schema/execution-event.v4.json
var Schema []byte
