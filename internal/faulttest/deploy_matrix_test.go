//go:build unix

package faulttest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/internal/natsperm"
	"github.com/auditflow/auditflow/lock"
)

// The matrix's roles: every user of deploy/nats/accounts.conf, and the
// runner of a second pipeline added as accounts.conf says to.
const matrixPipeline2 = "billing"

var matrixRoles = []string{roleAdmin, roleOperator, roleProjector, roleRunner, "runner-" + matrixPipeline2, roleConsole, roleSIEM}

// The engine's managed streams (AUDIT_HELD included whether it exists
// yet or not: permissions are checked before the stream is looked up).
var managedStreams = []string{"AUDIT", "AUDIT_MIRROR", "AUDIT_DEADLETTER", "AUDIT_WRITES", "AUDIT_VERIFY", "AUDIT_HELD", "KV_" + lock.DefaultBucket}

// The projectors' durable consumers, as accounts.conf names them.
var projectorDurables = []string{"projector-sqlite", "projector-mongo", "projector-dynamodb", "projector-couchbase"}

// matrixOp is one dangerous operation: a publish (a JetStream API request,
// sent with a reply inbox of the role's own), a subscription, or a
// JetStream publish on the lock bucket.
type matrixOp struct {
	name    string
	kind    string // "request", "subscribe", "publish" (a plain message), "kv" (a JetStream publish the bucket must refuse)
	subject string
	body    string
	header  nats.Header
}

// matrixOps are the operations no role may do (but the exceptions in
// byDesign), for role.
func matrixOps(role string) []matrixOp {
	var ops []matrixOp
	req := func(name, subject, body string) {
		ops = append(ops, matrixOp{name: name, kind: "request", subject: subject, body: body})
	}
	// Inboxes: everyone's replies, by wildcard, and each other role's.
	ops = append(ops,
		matrixOp{name: "subscribe _INBOX.>", kind: "subscribe", subject: "_INBOX.>"},
		matrixOp{name: "subscribe _INBOX.*.>", kind: "subscribe", subject: "_INBOX.*.>"})
	for _, other := range matrixRoles {
		if other == role {
			continue
		}
		ops = append(ops,
			matrixOp{name: "subscribe " + other + "'s inbox", kind: "subscribe", subject: "_INBOX." + other + ".>"},
			matrixOp{name: "forge a reply on " + other + "'s inbox", kind: "publish", subject: "_INBOX." + other + ".forged"})
	}
	// Streams: edit (bound, seal, promote, allow rollups), delete, purge,
	// delete a message.
	for _, s := range managedStreams {
		req("update stream "+s, "$JS.API.STREAM.UPDATE."+s, fmt.Sprintf(`{"name":%q,"max_msgs":1}`, s))
		req("delete stream "+s, "$JS.API.STREAM.DELETE."+s, "")
		req("purge stream "+s, "$JS.API.STREAM.PURGE."+s, "{}")
		req("delete a message of "+s, "$JS.API.STREAM.MSG.DELETE."+s, `{"seq":1}`)
	}
	// The projectors' durables on AUDIT, in every form of the consumer API.
	for _, c := range projectorDurables {
		cfg := fmt.Sprintf(`{"stream_name":"AUDIT","config":{"durable_name":%q,"ack_policy":"explicit","filter_subject":%%q}}`, c)
		req("create/update "+c, "$JS.API.CONSUMER.CREATE.AUDIT."+c, fmt.Sprintf(cfg, "audit.exec.billing.>"))
		req("create/update "+c+" with filter audit.>", "$JS.API.CONSUMER.CREATE.AUDIT."+c+".audit.>", fmt.Sprintf(cfg, "audit.>"))
		req("re-filter "+c+" to one pipeline", "$JS.API.CONSUMER.CREATE.AUDIT."+c+".audit.exec.billing.>", fmt.Sprintf(cfg, "audit.exec.billing.>"))
		req("create/update "+c+" (legacy durable API)", "$JS.API.CONSUMER.DURABLE.CREATE.AUDIT."+c, fmt.Sprintf(cfg, "audit.exec.billing.>"))
		req("delete "+c, "$JS.API.CONSUMER.DELETE.AUDIT."+c, "")
		req("pause "+c, "$JS.API.CONSUMER.PAUSE.AUDIT."+c, `{"pause_until":"2100-01-01T00:00:00Z"}`)
		req("pull from "+c, "$JS.API.CONSUMER.MSG.NEXT.AUDIT."+c, `{"batch":1,"expires":100000000}`)
		// An acknowledgement names its consumer: a forged one for a
		// projector's delivery would have it skip the event.
		ops = append(ops, matrixOp{name: "acknowledge a delivery of " + c, kind: "publish", subject: "$JS.ACK.AUDIT." + c + ".1.1.1.1.0"})
	}
	// The legacy ephemeral create takes the name from the body.
	req("create/update a projector durable (legacy API, name in the body)", "$JS.API.CONSUMER.CREATE.AUDIT",
		`{"stream_name":"AUDIT","config":{"name":"projector-sqlite","ack_policy":"none","deliver_policy":"new"}}`)
	// The projectors' durables on AUDIT_HELD.
	held := `{"stream_name":"AUDIT_HELD","config":{"durable_name":"projector-sqlite","ack_policy":"explicit","filter_subject":"audit.held.projector-sqlite"}}`
	req("create/update projector-sqlite on AUDIT_HELD", "$JS.API.CONSUMER.CREATE.AUDIT_HELD.projector-sqlite", held)
	req("create/update projector-sqlite on AUDIT_HELD with its filter", "$JS.API.CONSUMER.CREATE.AUDIT_HELD.projector-sqlite.audit.held.projector-sqlite", held)
	req("create/update projector-sqlite on AUDIT_HELD (legacy durable API)", "$JS.API.CONSUMER.DURABLE.CREATE.AUDIT_HELD.projector-sqlite", held)
	req("create/update a durable on AUDIT_HELD (legacy API, name in the body)", "$JS.API.CONSUMER.CREATE.AUDIT_HELD",
		`{"stream_name":"AUDIT_HELD","config":{"name":"projector-sqlite","ack_policy":"explicit"}}`)
	req("delete projector-sqlite on AUDIT_HELD", "$JS.API.CONSUMER.DELETE.AUDIT_HELD.projector-sqlite", "")
	req("pause projector-sqlite on AUDIT_HELD", "$JS.API.CONSUMER.PAUSE.AUDIT_HELD.projector-sqlite", `{"pause_until":"2100-01-01T00:00:00Z"}`)
	req("pull from projector-sqlite on AUDIT_HELD", "$JS.API.CONSUMER.MSG.NEXT.AUDIT_HELD.projector-sqlite", `{"batch":1,"expires":100000000}`)
	// The lock bucket: rollups and purges remove every lock of a key (or
	// of the bucket) at once; the bucket must refuse them to whoever may
	// write the key.
	for _, key := range []string{deployPipeline, matrixPipeline2} {
		subject := "$KV." + lock.DefaultBucket + "." + key
		ops = append(ops,
			matrixOp{name: "roll up " + key + "'s lock (Nats-Rollup: sub)", kind: "kv", subject: subject, header: nats.Header{"Nats-Rollup": {"sub"}}},
			matrixOp{name: "roll up the lock bucket (Nats-Rollup: all) on " + key, kind: "kv", subject: subject, header: nats.Header{"Nats-Rollup": {"all"}}},
			matrixOp{name: "purge " + key + "'s lock (KV purge)", kind: "kv", subject: subject,
				header: nats.Header{"KV-Operation": {"PURGE"}, "Nats-Rollup": {"sub"}}})
	}
	return ops
}

// byDesign are the cells a role is allowed, with why: its own job, or
// what a subject cannot deny (accounts.conf says so, and auditflow init
// reports the result). The test fails if one of them is denied, so that
// this list stays true.
var byDesign = map[[2]string]string{}

func init() {
	for _, c := range projectorDurables {
		byDesign[[2]string{roleProjector, "pull from " + c}] = "its job: every projector shares the role"
		byDesign[[2]string{roleProjector, "acknowledge a delivery of " + c}] = "its job: every projector shares the role"
		byDesign[[2]string{roleProjector, "re-filter " + c + " to one pipeline"}] = "a subject cannot say \"exactly audit.exec.>\": " +
			"the projector role owns its consumer's settings; auditflow init reports the filter (exit 3)"
	}
	byDesign[[2]string{roleProjector, "create/update projector-sqlite on AUDIT_HELD with its filter"}] = "its job"
	byDesign[[2]string{roleProjector, "pull from projector-sqlite on AUDIT_HELD"}] = "its job"
}

// TestDeployPermissionMatrix runs every role of deploy/nats × every
// dangerous operation against a server started from the deployment's
// configuration (with a second pipeline's runner): reading another
// role's replies (subscribing to _INBOX.>, to _INBOX.*.>, or to another
// role's inbox prefix) or forging one; updating, deleting or purging any
// managed stream (AUDIT, AUDIT_MIRROR, AUDIT_DEADLETTER, AUDIT_WRITES,
// AUDIT_VERIFY, AUDIT_HELD, the lock bucket) or deleting a message;
// creating, updating, deleting, pausing or pulling from a projector's
// durable consumer, in every form of the consumer API (name in the
// subject, name and filter, the legacy durable API, the legacy create
// with the name in the body), on AUDIT and AUDIT_HELD; rolling up or
// purging a lock key or the bucket. Each cell must be refused with the
// server's permission violation naming the subject (or, for a lock key
// the role may write, by the bucket, which allows no rollup) — never by
// a timeout; the subtests role/op report every cell that is allowed. The
// exceptions (byDesign) must be allowed, and each role may subscribe to
// its own inbox: the check tells them apart.
func TestDeployPermissionMatrix(t *testing.T) {
	d := startDeploymentWith(t, deployOptions{runners: []string{matrixPipeline2}})
	var users []string
	for _, u := range d.opts.Users {
		if u.Account != nil && u.Account.Name == "AUDITFLOW" {
			users = append(users, u.Username)
		}
	}
	if slices.Sort(users); !slices.Equal(users, slices.Sorted(slices.Values(matrixRoles))) {
		t.Fatalf("the deployment's users %v, the matrix's roles %v: every user must be in the matrix", users, matrixRoles)
	}
	if p := start(t, d.url(roleAdmin), bin.auditflow, "init", "--lock-lease", lease.String(), "--mirror", "AUDIT_MIRROR"); p.wait(t, 30*time.Second) != 0 {
		t.Fatalf("init:\n%s", p.out.String())
	}
	ctx := context.Background()

	var allowed []string
	for _, role := range matrixRoles {
		nc, js := d.connect(t, role)
		t.Run(role, func(t *testing.T) {
			t.Run("own inbox", func(t *testing.T) { // the control: a refusal is seen, an allowed cell is too
				if pe := try(ctx, nc, js, matrixOp{kind: "subscribe", subject: "_INBOX." + role + ".>"}); pe != nil {
					t.Fatalf("%s may not subscribe to its own inbox: %v", role, pe)
				}
			})
			for _, op := range matrixOps(role) {
				t.Run(op.name, func(t *testing.T) {
					refused := try(ctx, nc, js, op)
					why, exempt := byDesign[[2]string{role, op.name}]
					switch {
					case exempt && refused != nil:
						t.Errorf("%s: %s is refused (%v), but is listed as allowed by design (%s): update byDesign", role, op.name, refused, why)
					case exempt:
						t.Logf("allowed by design: %s", why)
					case refused == nil:
						allowed = append(allowed, role+"/"+op.name)
						t.Errorf("%s may %s (%s %s)", role, op.name, op.kind, op.subject)
					case !refused.ok:
						t.Errorf("%s %s: %v, want the server's refusal naming %q", role, op.name, refused.err, op.subject)
					}
				})
			}
		})
	}
	if len(allowed) > 0 {
		t.Errorf("%d cells allowed:\n  %s", len(allowed), strings.Join(allowed, "\n  "))
	}
}

// refusal is how the server refused an operation: ok if it is the
// permission violation naming the operation's subject, or the bucket's
// refusal of a rollup.
type refusal struct {
	ok  bool
	err error
}

func (r *refusal) Error() string { return r.err.Error() }

// try does op on nc and says how it was refused, or nil if it was not.
func try(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, op matrixOp) *refusal {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	before := nc.LastError()
	violation := func() *refusal {
		pe := natsperm.Since(nc, before, nil)
		if pe == nil {
			return nil
		}
		wantOp := "publish"
		if op.kind == "subscribe" {
			wantOp = "subscribe"
		}
		return &refusal{ok: pe.Op == wantOp && pe.Subject == op.subject && errors.Is(pe, nats.ErrPermissionViolation), err: pe}
	}
	switch op.kind {
	case "subscribe":
		sub, err := nc.SubscribeSync(op.subject)
		if err != nil {
			return &refusal{err: err}
		}
		defer func() { _ = sub.Unsubscribe() }()
		if err := nc.FlushWithContext(ctx); err != nil {
			return &refusal{err: err}
		}
		return violation()
	case "request", "publish":
		m := &nats.Msg{Subject: op.subject, Data: []byte(op.body), Header: op.header}
		if op.kind == "request" {
			m.Reply = nc.NewInbox() // the role's own
		}
		if err := nc.PublishMsg(m); err != nil {
			return &refusal{err: err}
		}
		// The server answers a publish it refuses before the flush's PONG.
		if err := nc.FlushWithContext(ctx); err != nil {
			return &refusal{err: err}
		}
		return violation()
	case "kv":
		m := &nats.Msg{Subject: op.subject, Data: []byte(`{"owner":"matrix"}`), Header: op.header}
		_, err := natsperm.Do(ctx, nc, nil, func(ctx context.Context) (*jetstream.PubAck, error) { return js.PublishMsg(ctx, m) })
		var pe *natsperm.Error
		var apiErr *jetstream.APIError
		switch {
		case err == nil:
			return nil
		case errors.As(err, &pe):
			return &refusal{ok: pe.Op == "publish" && pe.Subject == op.subject, err: err}
		case errors.As(err, &apiErr):
			return &refusal{ok: apiErr.ErrorCode == 10111 && strings.Contains(apiErr.Description, "rollup not permitted"), err: err}
		}
		return &refusal{err: err}
	}
	return &refusal{err: fmt.Errorf("unknown kind %q", op.kind)}
}
