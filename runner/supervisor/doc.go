// Package supervisor runs a change's command under a small supervisor
// process, so that the command never outlives the runner that started it
// nor the runner's lease on the pipeline lock.
//
// Without it a runner that is killed with SIGKILL leaves its change's
// command running, unrecorded, while another runner takes the lock and
// runs the same change again; a runner that is paused (SIGSTOP) or
// partitioned past its lease cannot stop anything. The supervisor is what
// is left when the runner cannot act.
//
// # Processes
//
// The runner re-executes its own binary (os.Executable) as the supervisor;
// Main, called first thing in main(), turns that process into one. A
// process is a supervisor only if its first argument is the mode argument
// and its environment carries the protocol variable; Start refuses to
// re-execute a binary whose main never called Main (Installed is false),
// since that would run the program itself again. Callers then run the
// command directly (runner/changefile does), without these guarantees.
//
//	runner ──control pipe──▶ supervisor ──fork/exec──▶ sh -c script (own process group)
//	       ◀──status pipe───             ◀─ re-parented orphans (Linux)
//
// The supervisor is in its own process group, and catches and drops
// SIGINT, SIGTERM and SIGHUP: the runner decides when its change stops.
// The command runs in a new process group, with the supervisor's stdout
// and stderr (the runner's writers) and Spec's directory and environment.
//
// # Protocol
//
// The runner holds the only write end of the control pipe (os.Pipe makes it
// close-on-exec, so no other child inherits it) and writes JSON lines:
// first the grace and the first deadlines, then deadline updates
// ("SIGTERM in D1, SIGKILL in D2") and at most one stop request.
// Durations are relative: each process measures them on its own monotonic
// clock, and the two never compare wall clocks. The supervisor answers on
// the status pipe with the command's pid, then with its Result.
//
// The supervisor:
//
//   - on a stop request (the runner's context was cancelled): SIGTERM to
//     the command's processes now, SIGKILL after the grace or at the kill
//     deadline if that comes first;
//   - at the last deadlines it was sent: SIGTERM at D1, SIGKILL at D2 (or
//     after the grace, if sooner). A runner that is alive keeps moving them
//     forward as its lease is refreshed; one that is paused or partitioned
//     stops doing so, and the supervisor alone ends the command before the
//     lease can pass to another runner;
//   - at EOF on the control pipe (the runner died, however: the kernel
//     closes a dead process's files): SIGTERM to every process of the
//     command at once, SIGKILL 500 ms later;
//   - when the command's main process exits: SIGTERM to whatever it left
//     running, SIGKILL 500 ms later, again until nothing is left; then it
//     reaps, reports and exits.
//
// If the supervisor itself is killed, Wait returns ErrSupervisorDied
// ("supervisor died: signal: killed") as soon as the process is gone, and
// the runner side kills what is left of the command's process group (it
// cannot if the supervisor died in the instant between starting the command
// and reporting its pid; on Linux the kernel still kills the command's main
// process then).
//
// # What is guaranteed where
//
// Linux: the supervisor is a child subreaper (prctl
// PR_SET_CHILD_SUBREAPER), so descendants that leave the process group
// (setsid, a double fork, a daemonizing tool) are re-parented to it; it
// finds them by scanning /proc and kills them too. No process of the
// command survives the runner by more than about half a second, nor the
// kill deadline; if the supervisor itself is killed the kernel kills the
// command's main process (PR_SET_PDEATHSIG) and the runner its group.
//
// Other Unix systems (macOS, the BSDs): the same, but only for the
// command's process group: a descendant that starts its own session
// escapes.
//
// Elsewhere (Windows) there is no supervisor: Installed is false and
// callers run commands directly, which die only when their context is
// cancelled.
//
// The usual limits apply: a signal sent by pid may, in a tiny window,
// reach a process that reused the pid of one that just exited; a process
// stuck in the kernel ignores SIGKILL (the Result counts it as Unkillable).
package supervisor
