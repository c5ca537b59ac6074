package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// Info identifies a build.
type Info struct {
	Version   string `json:"version"`   // the module version, "(devel)" for a build from a work tree
	Commit    string `json:"commit"`    // the VCS revision, with "-dirty" if the tree had changes; "unknown" without VCS data
	GoVersion string `json:"goVersion"` // the Go toolchain that built it
}

// Read returns this binary's build information.
func Read() Info {
	info := Info{Version: "(devel)", Commit: "unknown", GoVersion: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return info
	}
	if v := bi.Main.Version; v != "" {
		info.Version = v
	}
	if bi.GoVersion != "" {
		info.GoVersion = bi.GoVersion
	}
	dirty := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			info.Commit = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if dirty && info.Commit != "unknown" {
		info.Commit += "-dirty"
	}
	return info
}

// String is the --version line without the program name.
func (i Info) String() string {
	return fmt.Sprintf("version %s, commit %s, %s", i.Version, i.Commit, i.GoVersion)
}

// Line is what a command prints for --version: "runner version …".
func Line(program string) string { return program + " " + Read().String() }

// Register adds the auditflow_build_info gauge (always 1, labelled
// version, commit and goversion) to reg, the way Prometheus exporters
// publish their build: join on it to see which build produced a series.
func Register(reg prometheus.Registerer) error {
	i := Read()
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "auditflow_build_info",
		Help:        "The build of auditflow running: always 1, labelled with its version, VCS commit and Go version.",
		ConstLabels: prometheus.Labels{"version": i.Version, "commit": i.Commit, "goversion": i.GoVersion},
	})
	g.Set(1)
	return reg.Register(g)
}
