// Package timeflag reads the one time syntax every reader of the audit
// takes — the CLI's --since and the console API's since and until: a
// duration back from now (24h, 90m) or an RFC 3339 time
// (2026-11-29T10:00:00Z). One parser, so that what works on the command
// line works in a URL.
package timeflag
