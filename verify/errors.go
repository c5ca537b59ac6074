package verify

import "errors"

// ErrNeedsTrust: a repair was planned without a trust list for a store
// whose rows carry a projector's trust verdicts. Written without them, the
// rows would lose the verdicts and the issues forgeries opened would close.
var ErrNeedsTrust = errors.New("verify: repair needs the trust list")
