package projector

import "errors"

// ErrInvalidConfig: a Config value is not allowed.
var ErrInvalidConfig = errors.New("projector: invalid config")

// ErrNotReady: the projector cannot do its work now (see Projector.Ready).
var ErrNotReady = errors.New("projector: not ready")
