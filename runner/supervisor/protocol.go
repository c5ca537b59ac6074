package supervisor

import "time"

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
}
