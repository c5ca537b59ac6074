package lock_test

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// The chaos history is also checked for linearizability (porcupine, as
// etcd's robustness tests do) against a model of the lock as the server
// keeps it, which a lease's own bookkeeping (StopBy, Valid) does not
// enter: it checks what the clients were told, not what they believed.
//
// The model holds the current holder (a lease, by its token), the
// earliest moment its acquisition may have taken effect (the call), and
// the last token handed out. Its operations:
//
//   - acquire → token: legal if the lock is free, or if the holder's lease
//     could have expired by the time this acquire returned — at least a
//     lease after the holder's acquire was called, since the server keeps
//     every revision of the key a full lease and refreshes only lengthen
//     that — and if the token is above every earlier one.
//   - release → ok: legal only if the lease releasing is the holder (the
//     delete is conditional on its revision); it frees the lock.
//   - release → not held, or failed: it may have deleted the lock or not
//     (a lost lease's release still deletes a lock at its revision), and
//     at any later time (a timed-out delete may land after the heal), so
//     its return is left open.
//
// Refused acquires are left out, and so are acquires that failed
// otherwise: a create that timed out may land after the heal and hold the
// lock for nobody (a ghost), and a refresh given up on may land and
// lengthen a lease. Neither can make a legal history look illegal here:
// they only keep the lock longer, so the next acquire is later still, and
// a refused acquire constrains nothing once ghosts exist. That makes the
// model sound (it never flags a correct lock) at the price of leaving
// refusals unchecked.
type lockState struct {
	holder    uint64 // token of the holder's lease; 0: free
	since     int64  // when the holder's acquire was called, ns
	lastToken uint64
}

type lockOp struct {
	release bool
	client  string
	token   uint64 // release: the lease's token
}

type lockResult struct {
	token uint64 // acquire: the lease's token
	ok    bool   // release: it returned nil
}

func lockModel(lease time.Duration) porcupine.Model {
	m := porcupine.NondeterministicModel{
		Init: func() []any { return []any{lockState{}} },
		Step: func(state, input, output any) []any {
			s, in, out := state.(lockState), input.(timedOp), output.(lockResult)
			switch {
			case !in.op.release:
				if s.holder != 0 && in.ret-s.since < int64(lease) || out.token <= s.lastToken {
					return nil
				}
				return []any{lockState{holder: out.token, since: in.call, lastToken: out.token}}
			case out.ok:
				if s.holder != in.op.token {
					return nil
				}
				return []any{lockState{lastToken: s.lastToken}}
			case s.holder == in.op.token:
				return []any{s, lockState{lastToken: s.lastToken}}
			default:
				return []any{s}
			}
		},
		DescribeOperation: func(input, output any) string {
			in, out := input.(timedOp), output.(lockResult)
			if in.op.release {
				return fmt.Sprintf("%s release(%d) → %v", in.op.client, in.op.token, out.ok)
			}
			return fmt.Sprintf("%s acquire → %d", in.op.client, out.token)
		},
		DescribeState: func(state any) string {
			s := state.(lockState)
			return fmt.Sprintf("holder %d since %s, last token %d", s.holder, time.Duration(s.since), s.lastToken)
		},
	}
	return m.ToModel()
}

// timedOp is an operation with its call and return times: the model's
// step sees inputs only, and the lease rule needs the times.
type timedOp struct {
	op        lockOp
	call, ret int64
}

// operations turns the holds of a history into porcupine operations,
// timed in ns since t0.
func operations(holds []hold, t0 time.Time) []porcupine.Operation {
	var ops []porcupine.Operation
	ns := func(t time.Time) int64 { return int64(t.Sub(t0)) }
	for _, h := range holds {
		acq := timedOp{op: lockOp{client: h.client}, call: ns(h.called), ret: ns(h.start)}
		ops = append(ops, porcupine.Operation{Input: acq, Call: acq.call, Output: lockResult{token: h.token}, Return: acq.ret})
		rel := timedOp{op: lockOp{release: true, client: h.client, token: h.token}, call: ns(h.release), ret: ns(h.released)}
		if h.releaseErr != nil {
			// A delete given up on may still land after the heal, also
			// when Release reports ErrNotHeld (a lost lease).
			rel.ret = math.MaxInt64
		}
		ops = append(ops, porcupine.Operation{Input: rel, Call: rel.call, Output: lockResult{ok: h.releaseErr == nil}, Return: rel.ret})
	}
	return ops
}

// checkLinearizable checks holds against the model and, if they are not
// linearizable, says so and writes porcupine's visualization as a test
// artifact.
func checkLinearizable(t *testing.T, holds []hold, t0 time.Time, lease time.Duration) porcupine.CheckResult {
	t.Helper()
	model := lockModel(lease)
	res, info := porcupine.CheckOperationsVerbose(model, operations(holds, t0), 20*time.Second)
	if res == porcupine.Illegal {
		path := filepath.Join(t.ArtifactDir(), "lock-history.html")
		if f, err := os.Create(path); err == nil {
			_ = porcupine.Visualize(model, info, f)
			_ = f.Close()
		}
		t.Errorf("the lock's history is not linearizable against the lease model (visualization: %s, kept with -artifacts)", path)
	}
	return res
}
