package mongostore_test

import (
	"context"
	"log"

	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/stores/mongostore"
)

// The audit collections go next to the target system's own data; the
// connection (replica set, TLS, auth, pool) is all in the URI.
func ExampleNew() {
	ctx := context.Background()
	client, err := mongo.Connect(options.Client().ApplyURI(
		"mongodb://audit:secret@db1:27017,db2:27017,db3:27017/?replicaSet=rs0&authSource=admin&tls=true&maxPoolSize=20"))
	if err != nil {
		log.Fatal(err)
	}
	defer func() { _ = client.Disconnect(ctx) }()

	store, err := mongostore.New(ctx, client, mongostore.Config{
		Database: "orders", // the target system's database; default "auditflow"
		// Collections, write concern (majority + journal), read concern
		// (majority), read preference (primary), batch size and indexes
		// keep their defaults.
	})
	if err != nil {
		log.Fatal(err)
	}
	defer func() { _ = store.Close() }()

	open, err := store.Issues(ctx, stores.IssueQuery{Status: stores.IssueOpen})
	if err != nil {
		log.Fatal(err)
	}
	for _, i := range open {
		log.Printf("%s/%s is %s since %s: %s", i.Pipeline, i.ChangeID, i.State, i.UpdatedAt, i.ErrorMessage)
	}
}
