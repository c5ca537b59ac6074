package trust_test

import (
	"fmt"

	"github.com/nats-io/nkeys"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/trust"
)

// A runner signs the bytes it publishes; a projector or verify judges the
// signature it reads with them against the trust list.
func Example() {
	kp, _ := nkeys.CreateUser()
	runner, _ := trust.NewSigner(kp)
	list, _ := trust.ParseList([]byte(`
keys:
  - key: ` + runner.PublicKey() + `
    name: runner-billing
    roles: [runner]
    pipelines: [billing]
`))

	data := []byte(`{"specversion":"1.0", "…": "the event as published"}`)
	header := runner.Sign(data) // sent as the Auditflow-Signature header

	at := trust.Signed{Pipeline: "billing", Type: events.ExecutionSucceeded, Seq: 42, Hash: events.Hash(data)}
	_, _, v := list.CheckHeader(header, at)
	fmt.Println("as published:", v.Trusted(), v.Name)

	at.Hash = events.Hash([]byte(`{"…": "other bytes under the same header"}`))
	_, _, v = list.CheckHeader(header, at)
	fmt.Println("altered:", v.Kind)

	_, _, v = list.CheckHeader("", at)
	fmt.Println("no header:", v.Kind)
	// Output:
	// as published: true runner-billing
	// altered: bad signature
	// no header: unsigned
}
