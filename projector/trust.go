package projector

import "github.com/auditflow/auditflow/stores"

// watchTrust counts and logs an untrusted event (see Config.Trust). It is
// an issue in the store, not an outage: readiness does not depend on it,
// since no restart or retry would change the verdict.
func (p *Projector) watchTrust(r stores.Record) {
	if r.Trust == "" {
		return
	}
	p.untrusted.Add(1)
	p.log.Error("untrusted event: stored with its verdict, its change's issue is open until a trusted operator resolves it",
		"seq", r.Seq, "pipeline", r.Pipeline, "change", r.ChangeID, "type", r.Type, "signer", r.Signer, "problem", r.Trust,
		"operator", r.Operator, "runner", r.RunnerID)
}
