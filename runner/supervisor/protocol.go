package supervisor

import (
	"syscall"
	"time"
)

// The runner and its supervisor talk over two pipes in JSON lines. The
// runner writes control messages (fd 3 in the supervisor); the supervisor
// writes status messages (fd 4). Durations are relative: the two processes
// never compare wall clocks, each measures on its own monotonic clock.

// Control operations, runner → supervisor.
const (
	// opStart is always the first line: the grace and the first deadlines.
	// The supervisor starts nothing before it has read it, so a command is
	// never without its deadlines.
	opStart = "start"
	// opDeadlines replaces the deadlines (the lease was refreshed).
	opDeadlines = "deadlines"
	// opStop asks for SIGTERM now and SIGKILL after the grace (or at the
	// kill deadline if sooner).
	opStop = "stop"
)

type control struct {
	Op    string        `json:"op"`
	Grace time.Duration `json:"grace,omitempty"`
	// Bounded says StopIn and KillIn are set: SIGTERM in StopIn, SIGKILL
	// in KillIn, counted from when the supervisor reads the line.
	Bounded bool          `json:"bounded,omitempty"`
	StopIn  time.Duration `json:"stopIn,omitempty"`
	KillIn  time.Duration `json:"killIn,omitempty"`
	// MaxContainment is Spec.MaxContainment (opStart only).
	MaxContainment Containment `json:"maxContainment,omitempty"`
}

// Status events, supervisor → runner.
const (
	evStarted = "started" // the command runs; Pid is its process (and group) id
	evDone    = "done"    // the command and all it left are gone; Result says how it ended
)

type status struct {
	Ev     string  `json:"ev"`
	Pid    int     `json:"pid,omitempty"`
	Result *Result `json:"result,omitempty"`
	// Err is set when the command could not be started at all.
	Err string `json:"err,omitempty"`
	// Containment is how the command is held (evStarted); Unavailable says
	// why each stronger mechanism was not used.
	Containment Containment `json:"containment,omitempty"`
	Unavailable []string    `json:"unavailable,omitempty"`
	// Cgroup is the command's cgroup directory (ContainCgroup): the runner
	// kills it if the supervisor dies.
	Cgroup string `json:"cgroup,omitempty"`
}

// With ContainPIDNamespace the command is the child of a small init, the
// namespace's first process, which the supervisor starts with a socket on
// its fd 3. The init reports on it in initReport lines; the socket's EOF
// tells the init that the supervisor is gone.
const (
	evExited = "exited" // the command's main process exited
)

type initReport struct {
	// Ev is evStarted (Pid is the command's pid as the supervisor sees
	// it, 0 if it could not be found), evExited (ExitCode and Signal as in
	// Result), or evDone with Err when the command could not be started.
	Ev       string         `json:"ev"`
	Pid      int            `json:"pid,omitempty"`
	ExitCode int            `json:"exitCode,omitempty"`
	Signal   syscall.Signal `json:"signal,omitempty"`
	Err      string         `json:"err,omitempty"`
}
