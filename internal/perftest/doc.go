// Package perftest holds the scale-out benchmarks (build tag perf, not in
// the default test run): several projector processes on one durable
// consumer against one, and an R3 stream on three nats-server processes
// against R1 on one. Each figure is reported as a ratio to a baseline
// measured in the same run, because the machines these run on are shared
// and absolute rates move with their load.
//
//	go test -tags perf ./internal/perftest -run XXX -bench . -benchtime 1x
package perftest
