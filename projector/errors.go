package projector

import "errors"

// ErrInvalidConfig: a Config value is not allowed.
var ErrInvalidConfig = errors.New("projector: invalid config")
