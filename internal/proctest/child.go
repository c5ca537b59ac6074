//go:build unix

package proctest

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// resultPrefix starts the line a child process prints its result on.
const resultPrefix = "RESULT "

// RunChild runs this test binary again as a separate process (a
// benchmark's child, measured alone: its own peak RSS, its own CPU),
// running only the test named test, with env added to its environment and
// args after the test flags. It decodes into result the JSON the child
// printed with PrintResult, and returns the child's output. It fails tb
// with that output if the child fails or prints no result.
func RunChild(tb testing.TB, test string, env []string, result any, args ...string) []byte {
	tb.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"-test.run=^" + test + "$", "-test.v"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		tb.Fatalf("child %s %v: %v\n%s", test, env, err, out)
	}
	for line := range strings.Lines(string(out)) {
		if s, ok := strings.CutPrefix(strings.TrimSpace(line), resultPrefix); ok {
			if err := json.Unmarshal([]byte(s), result); err != nil {
				tb.Fatalf("child %s: result %q: %v", test, s, err)
			}
			return out
		}
	}
	tb.Fatalf("child %s %v printed no result\n%s", test, env, out)
	return out
}

// PrintResult prints v, in a child process, as the result RunChild reads.
func PrintResult(tb testing.TB, v any) {
	tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	fmt.Println(resultPrefix + string(b))
}
