// Package faulttest holds the multi-process fault tests: the runner, the
// operator CLI and the example fence built as binaries and run as separate
// processes against a real nats-server, then killed with SIGKILL, paused
// with SIGSTOP, interrupted with SIGTERM or cut off from NATS by a TCP
// proxy, at the worst moments, as operators and attackers would. Each test
// asserts a guarantee the docs make. The package has no code of its
// own; the long soak runs with -tags stress (see docs/testing.md).
package faulttest
