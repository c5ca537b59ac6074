package changefile

import "testing"

// RunDirectly makes the test's commands run without a supervisor, as in a
// binary whose main does not install one.
func RunDirectly(t testing.TB) {
	old := useSupervisor
	useSupervisor = func() bool { return false }
	t.Cleanup(func() { useSupervisor = old })
}
