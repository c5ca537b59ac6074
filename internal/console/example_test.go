package console_test

import (
	"fmt"
	"strings"

	"github.com/auditflow/auditflow/internal/console"
)

// A key is made once: the key goes to its user, the line (its name, role
// and SHA-256 hash) to the keys file that auditflow console reads.
func ExampleNewKey() {
	key, line, err := console.NewKey("grafana", console.RoleStats)
	if err != nil {
		fmt.Println(err)
		return
	}
	keys, err := console.ParseKeys(strings.NewReader("# monitoring\n" + line))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(strings.HasPrefix(key, console.KeyPrefix), len(key))
	fmt.Println(keys[0].Name, keys[0].Role, strings.Contains(line, key))
	// Output:
	// true 47
	// grafana stats false
}
