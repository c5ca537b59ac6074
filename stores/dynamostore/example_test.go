package dynamostore_test

import (
	"context"
	"fmt"
	"log"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"

	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/stores/dynamostore"
)

// A store on DynamoDB Local (or dynalite): region, credentials and endpoint
// belong to the client. Against AWS, drop the endpoint and the static
// credentials and let LoadDefaultConfig find the real ones.
func ExampleNew() {
	ctx := context.Background()
	awsCfg, err := config.LoadDefaultConfig(ctx,
		config.WithRegion("us-east-1"),
		config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider("local", "local", "")))
	if err != nil {
		log.Fatal(err)
	}
	client := dynamodb.NewFromConfig(awsCfg, func(o *dynamodb.Options) {
		o.BaseEndpoint = aws.String("http://127.0.0.1:8000")
	})
	store, err := dynamostore.New(ctx, client, dynamostore.Config{TablePrefix: "dev_"})
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()

	open, err := store.Issues(ctx, stores.IssueQuery{Status: stores.IssueOpen})
	if err != nil {
		log.Fatal(err)
	}
	for _, i := range open {
		fmt.Println(i.Pipeline, i.ChangeID, i.State, i.ErrorMessage)
	}
}
