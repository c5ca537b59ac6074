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
//	apply: sqlite3 users.db 'CREATE INDEX users_email ON users(email)'
//	rollback: sqlite3 users.db 'DROP INDEX IF EXISTS users_email'
//
// Commands run with `sh -c` in the directory holding the file, with the
// runner's environment, Options.Env, and AUDITFLOW_PIPELINE,
// AUDITFLOW_CHANGE_ID and AUDITFLOW_CHANGE_DIR. When the runner runs the
// change (its context carries a [runner.Execution]) the command also gets
// AUDITFLOW_EXECUTION_ID and AUDITFLOW_LOCK_TOKEN, the fencing token of the
// lease it runs under, which a target system can use to refuse writes from
// a runner whose lease has passed to another (see examples/fencing).
// Outside an execution (a test calling Apply directly) both are absent,
// even if the runner's own environment had them: a wrong token is worse
// than none. A non-zero exit is a failure; the tail of the command's
// output becomes the recorded error trace.
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
