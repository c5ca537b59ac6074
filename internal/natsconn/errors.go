package natsconn

import "errors"

// ErrInvalidConfig wraps every problem Validate finds: a usage error, not
// an unreachable server.
var ErrInvalidConfig = errors.New("invalid NATS configuration")
