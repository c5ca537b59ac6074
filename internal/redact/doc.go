// Package redact keeps credentials out of everything auditflow shows or
// records: help texts, errors, logs, and the output of change commands that
// becomes an event's error trace (on a stream that cannot be purged, and in
// every audit store).
//
// Two tools, one idea each:
//
//   - [URI] shows a connection string with its credential parts replaced by
//     "redacted", and [Secrets] returns those parts, for every URI kind the
//     commands take: NATS URL lists (user:password@, token@, comma-separated,
//     with or without a scheme), MongoDB URIs (user:password@, query
//     parameters such as tlsCertificateKeyFilePassword, and the
//     AWS_SESSION_TOKEN of authMechanismProperties), Couchbase connection
//     strings and DynamoDB endpoints (userinfo, and password-, token-,
//     secret- and signature-like query parameters such as
//     X-Amz-Security-Token). Both work on text, not on a parsed URL, so an
//     unparseable URL is redacted as well as a valid one.
//   - A [Masker] replaces known secret values with "***" wherever they appear:
//     in a string, an error's text, or a stream of output ([Masker.Writer]
//     holds back only what could be the start of a secret, so a secret split
//     across writes is still masked). [EnvSecrets], [SecretFiles] and
//     [FileSecrets] find the values a process should mask from its
//     environment and the files it names. A masker for recorded output
//     ([NewOutputMasker]) also masks credentials by their form, whatever
//     their value: NAME=value, "name": value, a URL's password.
//
// Whether a name (a variable, a JSON key, a query parameter) is a
// credential's is [SecretKey]'s one rule, read from the name's words:
// DB_PASS, STRIPE_KEY, SMTP_AUTH and apiKey are; KEYBOARD, AUTHOR and
// KEY_ID are not.
//
// Values shorter than [MinLen] bytes are not masked: they would blank out
// ordinary output, and are guessable anyway.
package redact
