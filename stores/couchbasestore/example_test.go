package couchbasestore_test

import (
	"context"
	"fmt"
	"log"

	"github.com/couchbase/gocb/v2"

	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/stores/couchbasestore"
)

func ExampleNew() {
	ctx := context.Background()
	cluster, err := gocb.Connect("couchbase://127.0.0.1", gocb.ClusterOptions{
		Authenticator: gocb.PasswordAuthenticator{Username: "Administrator", Password: "password"},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer cluster.Close(nil)

	// One collection per store; it is created if missing.
	st, err := couchbasestore.New(ctx, cluster, couchbasestore.Config{
		Bucket: "audit", Scope: "auditflow", Collection: "production",
	})
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close()

	open, err := st.Issues(ctx, stores.IssueQuery{Status: stores.IssueOpen})
	if err != nil {
		log.Fatal(err)
	}
	for _, i := range open {
		fmt.Println(i.Pipeline, i.ChangeID, i.State, i.ErrorMessage)
	}
}
