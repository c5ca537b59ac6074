package buildinfo_test

import (
	"fmt"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/auditflow/auditflow/internal/buildinfo"
)

// A command prints Line for --version, and a process that serves metrics
// registers the auditflow_build_info gauge.
func Example() {
	fmt.Println(strings.HasPrefix(buildinfo.Line("runner"), "runner version "))
	reg := prometheus.NewRegistry()
	fmt.Println(buildinfo.Register(reg))
	// Output:
	// true
	// <nil>
}
