package supervisor

import "fmt"

// Containment is how a supervisor holds a command's processes together so
// that it can end all of them, and what is left to end them if the
// supervisor itself dies. The supervisor uses the strongest one the host
// allows (see the package doc); Result.Containment and Process.Containment
// say which one a command got.
type Containment string

const (
	// ContainPIDNamespace: the command runs in a PID namespace of its own
	// (Linux; as root, or as any user where unprivileged user namespaces are
	// allowed), whose first process is a small init, the supervisor's child.
	// No process can leave the namespace, and when its init dies, however
	// it dies, the kernel kills every process in it: nothing of the command
	// outlives the supervisor, even when the runner and the supervisor are
	// killed together. Inside, pids are the namespace's own: the command
	// cannot signal processes outside it by pid.
	ContainPIDNamespace Containment = "pid-namespace"
	// ContainCgroup: the command runs in a cgroup v2 of its own (Linux, a
	// writable cgroup v2 hierarchy, Linux 5.14+), which the supervisor
	// kills at once (cgroup.kill), and so does the runner if the supervisor
	// dies. Processes that left the process group are in the cgroup too.
	// If the runner and the supervisor die together, nobody is left to kill
	// it.
	ContainCgroup Containment = "cgroup"
	// ContainSubreaper: the command's process group, and the processes that
	// left it, which a subreaper supervisor finds in /proc (Linux). If the
	// supervisor dies, the runner kills the process group, but the processes
	// that left it keep running.
	ContainSubreaper Containment = "subreaper"
	// ContainProcessGroup: the command's process group only (Unix systems
	// other than Linux): a process that starts its own session escapes.
	ContainProcessGroup Containment = "process-group"
)

// rank orders the mechanisms, strongest highest; 0 is not a mechanism.
func (c Containment) rank() int {
	switch c {
	case ContainPIDNamespace:
		return 4
	case ContainCgroup:
		return 3
	case ContainSubreaper:
		return 2
	case ContainProcessGroup:
		return 1
	}
	return 0
}

// allows reports whether a command limited to limit may use c ("" is no
// limit).
func (limit Containment) allows(c Containment) bool {
	return limit == "" || c.rank() <= limit.rank()
}

func (c Containment) validate() error {
	if c != "" && c.rank() == 0 {
		return fmt.Errorf("supervisor: unknown containment %q", string(c))
	}
	return nil
}
