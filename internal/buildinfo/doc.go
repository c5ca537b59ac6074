// Package buildinfo says which build of auditflow is running: the module
// version, the VCS commit and the Go version, read from the binary itself
// (runtime/debug.ReadBuildInfo), so no release step has to stamp them. The
// three commands print it for --version, and a process with a Prometheus
// registry exports it as the auditflow_build_info gauge.
package buildinfo
