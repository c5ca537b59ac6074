package natsconn_test

import (
	"strings"
	"testing"

	"github.com/auditflow/auditflow/internal/natsconn"
)

func TestRedact(t *testing.T) {
	got := natsconn.Redact("nats://user:s3cret@a:4222,nats://b:4222,tls://tok3n@c:4222")
	if strings.Contains(got, "s3cret") || strings.Contains(got, "tok3n") || !strings.Contains(got, "nats://b:4222") {
		t.Fatalf("Redact = %q", got)
	}
}

func TestValidate(t *testing.T) {
	for name, c := range map[string]natsconn.Config{
		"no url":        {},
		"cert, no key":  {URL: "nats://x", TLSCert: "c.pem"},
		"missing creds": {URL: "nats://x", Creds: "/nonexistent/user.creds"},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := (natsconn.Config{URL: "nats://x"}).Validate(); err != nil {
		t.Fatal(err)
	}
}
