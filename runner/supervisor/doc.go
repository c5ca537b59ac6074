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
//	runner ──control pipe──▶ supervisor ──▶ init (PID 1 of a new PID namespace, Linux)
//	       ◀──status pipe───                  └─▶ sh -c script (own process group)
//
// The supervisor renames itself auditflow-super (the name ps, killall and
// pkill see; its argv[0] is auditflow-supervisor), so that `killall runner`
// or `pkill -x runner` spares it and it can still end the change. It is in
// its own process group, and catches and drops SIGINT, SIGTERM and SIGHUP:
// the runner decides when its change stops. The command runs in a new
// process group, with the supervisor's stdout and stderr (the runner's
// writers) and Spec's directory and environment.
//
// How the supervisor holds the command's processes together is its
// Containment, the strongest the host allows (Spec.MaxContainment may cap
// it); Process.Containment and Result.Containment say which one a command
// got, and Spec.Logger gets a line saying why a stronger one was not
// available:
//
//   - ContainPIDNamespace (Linux; as root, or as any user where the kernel
//     allows unprivileged user namespaces): the command runs in a PID
//     namespace of its own, under a small init (the same binary again,
//     named auditflow-init) that the supervisor starts with
//     PR_SET_PDEATHSIG SIGKILL and a socket whose EOF it also watches. The
//     init forwards SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 to
//     every process in the namespace, reaps them, and exits when the
//     command has exited and nothing else is left. No process can leave a
//     PID namespace, and when its init dies, the kernel kills every
//     process in it. A user that is not root gets a user namespace too,
//     mapping the user and group to themselves.
//   - ContainCgroup (Linux, where the cgroup v2 hierarchy is writable, e.g.
//     as root or in a delegated subtree, with cgroup.kill, Linux 5.14+): the
//     command starts in a cgroup of its own (created under the runner's,
//     named auditflow-PID-N) that the supervisor kills at once
//     (cgroup.kill), and removes.
//   - ContainSubreaper (Linux otherwise): the supervisor is a child
//     subreaper (PR_SET_CHILD_SUBREAPER), so descendants that leave the
//     process group (setsid, a double fork, a daemonizing tool) are
//     re-parented to it; it finds them by scanning /proc.
//   - ContainProcessGroup (other Unix systems): the command's process group.
//
// # Protocol
//
// The runner holds the only write end of the control pipe (os.Pipe makes it
// close-on-exec, so no other child inherits it) and writes JSON lines:
// first the grace and the first deadlines, then deadline updates
// ("SIGTERM in D1, SIGKILL in D2") and at most one stop request.
// Durations are relative: each process measures them on its own monotonic
// clock, and the two never compare wall clocks. The supervisor answers on
// the status pipe with the command's pid and containment, then with its
// Result. In a PID namespace the command is the init's child: the init
// reports its pid (as the supervisor sees it) and then its exit status on
// the socket, and the supervisor signals the command through the init
// (SIGTERM, which it forwards; SIGKILL, which ends the namespace).
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
// ("supervisor died: signal: killed") as soon as the process is gone; what
// happens to the command depends on its containment (below).
//
// # What is guaranteed where
//
// With a PID namespace (Linux, root or unprivileged user namespaces),
// nothing of a change outlives its runner, however the runner, the
// supervisor or the init die, together or alone (kill -9 of all of them,
// `killall -9 runner`, the OOM killer): a killed supervisor takes the init
// with it (Pdeathsig), and a dead init takes the whole namespace with it,
// setsid escapees and orphaned grandchildren included. A dead runner
// leaves the supervisor to stop the change: SIGTERM to every process, then
// SIGKILL half a second later. The price: inside the namespace, pids are
// the namespace's own, so a change cannot signal processes outside it by
// pid (`kill $(cat /run/app.pid)`, `nginx -s reload`, `pkill` fail with "no
// such process"; ask the service manager instead, e.g. `systemctl reload`,
// or cap Spec.MaxContainment at ContainCgroup); for a user that is not
// root, set-user-ID programs such as sudo do not gain privileges, and
// files of users other than the runner's show as owned by nobody.
//
// With only a writable cgroup v2 (Linux): a change dies with its runner,
// and, if the supervisor alone is killed, the runner kills the change's
// cgroup, setsid escapees included. If the runner and the supervisor are
// killed together (kill -9 of both, `killall -9` of the supervisor's name
// and the runner's), nobody is left to kill it: the processes that did
// not get SIGKILL with the command's main process (its background children
// and escapees) keep running, and their cgroup is left behind.
//
// With neither (Linux): a change dies with its runner, escapees included.
// If the supervisor is killed, the kernel kills the command's main process
// (PR_SET_PDEATHSIG) and the runner its process group, but escapees keep
// running; if both are killed, only the command's main process dies.
//
// Other Unix systems (macOS, the BSDs): as Linux with neither, but only
// for the command's process group: a descendant that starts its own
// session escapes even a runner's death.
//
// Elsewhere (Windows) there is no supervisor: Installed is false and
// callers run commands directly, which die only when their context is
// cancelled.
//
// The usual limits apply: a signal sent by pid may, in a tiny window,
// reach a process that reused the pid of one that just exited; a process
// stuck in the kernel ignores SIGKILL (the Result counts it as Unkillable).
package supervisor
