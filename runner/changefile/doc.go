// Package changefile loads change units from YAML files, so a pipeline can
// be written without Go: each file names a change and the shell commands
// that apply and (optionally) roll it back.
//
//	id: 0002-add-email-index
//	author: alice
//	order: "0002"
//	targetSystem: users-db
//	recovery: MANUAL_INTERVENTION   # or ALWAYS_RETRY
//	transactional: false
//	timeout: 5m                     # default 10m
//	grace: 30s                      # SIGTERM to SIGKILL; default Options.Grace (10s)
//	metadata: {ticket: OPS-1234}
//	env: {DB: users.db}             # variables set for the commands
//	passEnv: [AUDITFLOW_MONGO_URI]  # AUDITFLOW_* variables the commands need
//	secretEnv: [LICENSE]            # variables whose values are secrets (masked)
//	apply: sqlite3 "$DB" 'CREATE INDEX users_email ON users(email)'
//	rollback: sqlite3 "$DB" 'DROP INDEX IF EXISTS users_email'
//
// Unknown keys are errors: a misspelt "rolback" must not mean "no rollback".
// So are an empty file and a second YAML document in a file (it would be
// silently ignored); errors name the file, the line and the key. Orders
// compare as text, so Load warns (Options.Logger) when every order looks
// like a number and text order is not numeric order (10 before 9).
//
// # Environment
//
// Commands run with `sh -c` in the directory holding the file, with the
// runner's environment except its AUDITFLOW_* variables, then Options.Env,
// the file's env:, and AUDITFLOW_PIPELINE, AUDITFLOW_CHANGE_ID and
// AUDITFLOW_CHANGE_DIR. The AUDITFLOW_* variables are the runner's
// configuration and credentials — the NATS URL with its password, the
// creds and nkey files, store URIs and passwords — and a command holding
// the runner's NATS credentials could write the audit log itself; a change
// that needs one names it in passEnv:. Everything else is kept (PATH, HOME,
// locale, proxies, the cloud and database credentials of the systems the
// changes change): it is what commands need, and not the runner's. A
// file's env: and passEnv: cannot name the variables the runner sets for
// each change. A command runs as the runner's user, so it can still read
// the files the runner's secrets are in (creds, nkey, password files): this
// keeps secrets out of commands' environment and recorded output, not out
// of their reach.
//
// When the runner runs the
// change (its context carries a [runner.Execution]) the command also gets
// AUDITFLOW_EXECUTION_ID and AUDITFLOW_LOCK_TOKEN, the fencing token of the
// lease it runs under, which a target system can use to refuse writes from
// a runner whose lease has passed to another (see examples/fencing).
// Outside an execution (a test calling Apply directly) both are absent,
// even if the runner's own environment had them: a wrong token is worse
// than none. A non-zero exit is a failure; the tail of the command's
// output becomes the recorded error trace.
//
// # Secrets in output
//
// Output and error traces are masked before anything keeps them, so that
// a failing script's `set -x`, `env` or a config file it prints cannot put
// a credential on the audit stream, which cannot be purged, and into every
// store. Every occurrence of a secret value, also one split across writes,
// becomes "***" in what Options.Output receives and in the error: the
// values of Options.Secrets, of the commands' environment variables whose
// names say they are credentials (DB_PASS, STRIPE_KEY, SMTP_AUTH,
// GITHUB_TOKEN; see redact.SecretKey) or that secretEnv: names, and URL
// credentials in any variable. Credentials are also masked by their form,
// whatever their value: the value of a NAME=value, NAME: value or
// "name": value whose name says it is a credential, and a URL's password
// and credential parameters (redact.NewOutputMasker). A command can still
// disclose a secret it can read by transforming it (base64, reversed, in
// pieces): masking keeps secrets out of the record by accident, not from
// a change that means to leak them.
//
// # Stopping
//
// A command is stopped with SIGTERM to its process group, then SIGKILL
// after the grace (the file's grace:, else Options.Grace), when its context
// is cancelled (the runner stops on SIGINT/SIGTERM or when its lease is
// about to be lost), when its timeout passes, or at the execution's kill
// deadline if that comes first. The error says what happened ("stopped
// (cause): sent SIGTERM, exited 143 after 40ms", "timed out after 1m: sent
// SIGTERM, killed with SIGKILL after the 10s grace") and wraps ErrStopped
// and the cause.
//
// When the binary's main called supervisor.Main (cmd/runner does), each
// command runs under a supervisor process (package runner/supervisor),
// which also stops it if the runner dies (kill -9 included) or stops
// renewing its lease (paused, partitioned): a change never outlives its
// runner or its lease. Otherwise the command is this process's child, in
// its own process group, and dies only when it is cancelled: if the
// runner is killed with SIGKILL, the command keeps running.
package changefile
