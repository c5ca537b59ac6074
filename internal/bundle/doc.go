// Package bundle writes, reads and checks audit bundles: a gzip-compressed
// tar that holds a range of the audit stream exactly as stored
// (events.ndjson), the trust list it was judged with (trust.yaml), a
// manifest signed by the exporting operator (manifest.json and
// manifest.sig) and a report for people (report.html).
//
// A bundle is checked offline, with nothing but its own files (and,
// better, a trust list the auditor got another way): every signature,
// every link of each change's hash chain, the manifest's counts and
// digests, and the report, which is regenerated from the events and
// compared byte for byte. A change is always exported from its first
// event, so that its chain can be checked from the start; events before
// the asked-for window are marked as context.
//
// The format is described for auditors in docs/audit-bundle.md.
package bundle
