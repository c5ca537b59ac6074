// Package inspect reads an auditflow deployment for operators: issues as
// shown (with their effective state and the guidance that names the exact
// fix command), changeLog rows as JSON, projection lag, store write latency
// from the AuditWrite events, and dead letters. The operator CLI
// (internal/cli) prints them as tables or JSON and the audit console
// (internal/console) serves them over HTTP, so both say the same thing
// about the same data.
package inspect
