package cli

import (
	"fmt"
	"text/tabwriter"

	"github.com/auditflow/auditflow/internal/trustflags"
	"github.com/auditflow/auditflow/trust"
	"github.com/auditflow/auditflow/verify"
)

// signing is the app's signed-events configuration, loaded once.
type signing struct {
	flags  trustflags.Config
	loaded bool
	signer *trust.Signer
	list   *trust.List
}

// signing loads --signing-key and --trust once (nil for what is not
// configured); a file that does not load is a usage error.
func (a *app) loadSigning() (*trust.Signer, *trust.List, error) {
	if !a.signing.loaded {
		s, l, err := a.signing.flags.Load()
		if err != nil {
			return nil, nil, usageError{err}
		}
		a.signing.signer, a.signing.list, a.signing.loaded = s, l, true
	}
	return a.signing.signer, a.signing.list, nil
}

// trustList is loadSigning's trust list.
func (a *app) trustList() (*trust.List, error) {
	_, l, err := a.loadSigning()
	return l, err
}

// requiredTrustList is trustList for what judges history — verify, replay,
// repair: outside the embedded mode it refuses to go on without a trust
// list unless --insecure-no-trust (trustflags.Config.Require), which it
// warns about.
func (a *app) requiredTrustList() (*trust.List, error) {
	if err := a.signing.flags.Require(a.embedded); err != nil {
		return nil, usageError{err}
	}
	if a.signing.flags.Unchecked() && !a.insecureWarned {
		a.insecureWarned = true
		a.log.Warn("running without a trust list (--insecure-no-trust): signatures are not checked, every event is believed")
	}
	return a.trustList()
}

// signaturesTable prints what verify found of signatures.
func signaturesTable(w *tabwriter.Writer, rep *verify.Report) {
	if !rep.TrustChecked {
		if rep.StoreVerdicts > 0 {
			fmt.Fprintf(w, "signatures	not checked (no --trust), although %d store rows carry a projector's trust verdict: give verify the projectors' trust list\n", rep.StoreVerdicts)
		}
		return
	}
	fmt.Fprintf(w, "signatures	%d untrusted events in the stream, %d store rows; %d not resolved by a trusted operator\n",
		len(rep.Untrusted), len(rep.StoreUntrusted), len(rep.OpenUntrusted()))
	showRows(w, "untrusted", "untrusted events", rep.Untrusted, verify.Untrusted.String)
	showRows(w, "untrusted row", "untrusted rows", rep.StoreUntrusted, verify.Untrusted.String)
}

// untrustedAdvice is the open untrusted events, one per sequence: an
// event found untrusted in the stream and in the store needs one fix.
func untrustedAdvice(rep *verify.Report) []verify.Untrusted {
	var out []verify.Untrusted
	seen := map[uint64]bool{}
	for _, u := range rep.OpenUntrusted() {
		if !seen[u.Seq] {
			seen[u.Seq] = true
			out = append(out, u)
		}
	}
	return out
}
