package redact_test

import (
	"fmt"
	"os"

	"github.com/auditflow/auditflow/internal/redact"
)

func ExampleURI() {
	fmt.Println(redact.URI("nats://auditflow:s3cret@n1:4222,tls://t0ken@n2:4222"))
	fmt.Println(redact.URI("mongodb://auditor:s3cret@db1,db2/?replicaSet=rs0&tlsCertificateKeyFilePassword=k3y"))
	// Output:
	// nats://auditflow:redacted@n1:4222,tls://redacted@n2:4222
	// mongodb://auditor:redacted@db1,db2/?replicaSet=rs0&tlsCertificateKeyFilePassword=redacted
}

func ExampleMasker_Writer() {
	m := redact.NewMasker(redact.Secrets("nats://auditflow:s3cret-pw@n1:4222")...)
	w := m.Writer(os.Stdout)
	fmt.Fprint(w, "+ echo s3cr")
	fmt.Fprint(w, "et-pw\ns3cret-pw\n")
	_ = w.Flush()
	// Output:
	// + echo ***
	// ***
}
