package buildinfo_test

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/auditflow/auditflow/internal/buildinfo"
)

func TestLineNamesVersionCommitAndGo(t *testing.T) {
	l := buildinfo.Line("runner")
	for _, want := range []string{"runner version ", ", commit ", ", go1."} {
		if !strings.Contains(l, want) {
			t.Fatalf("Line = %q, want %q in it", l, want)
		}
	}
}

func TestRegisterExportsTheGauge(t *testing.T) {
	reg := prometheus.NewRegistry()
	if err := buildinfo.Register(reg); err != nil {
		t.Fatal(err)
	}
	i := buildinfo.Read()
	mfs, err := reg.Gather()
	if err != nil || len(mfs) != 1 || mfs[0].GetName() != "auditflow_build_info" || len(mfs[0].Metric) != 1 {
		t.Fatalf("gathered %v, %v", mfs, err)
	}
	m := mfs[0].Metric[0]
	labels := map[string]string{}
	for _, l := range m.Label {
		labels[l.GetName()] = l.GetValue()
	}
	if m.GetGauge().GetValue() != 1 || labels["version"] != i.Version || labels["commit"] != i.Commit || labels["goversion"] != i.GoVersion {
		t.Fatalf("auditflow_build_info = %v %v", m.GetGauge().GetValue(), labels)
	}
	if err := buildinfo.Register(reg); err == nil {
		t.Fatal("registering twice: want an error")
	}
}
