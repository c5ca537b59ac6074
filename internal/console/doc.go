// Package console is the audit console: a read-only HTTP server over an
// audit store and the audit stream, for the compliance reviewers and
// on-call engineers who read the audit in a browser rather than the CLI.
//
// It serves a versioned JSON API under /api/v1 (described by the OpenAPI 3
// document at /api/v1/openapi.json) and server-rendered pages
// (html/template, assets embedded, one small script and no inline script)
// over the same handlers' data. Pages update live: the server subscribes
// to the projectors' AuditWrite events (audit.writes.>), reads the rows a
// write stored and pushes them to browsers as Server-Sent Events; a page
// then fetches itself again and swaps its content, so a new execution
// shows within a second of being stored.
//
// Everything it shows from events — ids, authors, metadata, error
// messages and traces — is untrusted text: templates escape it in HTML and
// SVG, and SSE and API payloads are JSON, which escapes <, > and &.
//
// Access is by API key (keys.go): a file of SHA-256 hashes of random keys
// with a role each, presented as "Authorization: Bearer KEY" to the API or
// once to the login form, which sets a session cookie for the pages. The
// console never writes: fixing stays in the CLI, whose exact command the
// issue pages show.
package console
