package projector

import "errors"

// ErrInvalidConfig: a Config value is not allowed.
var ErrInvalidConfig = errors.New("projector: invalid config")

// ErrNotReady: the projector cannot do its work now (see Projector.Ready).
var ErrNotReady = errors.New("projector: not ready")

// ErrStoreRefused: the store refused a record for good
// (stores.ErrInvalidRecord, e.g. a DynamoDB item over 400 KB). The record
// is dead-lettered and the rest of its batch stored.
var ErrStoreRefused = errors.New("the store refused the record")
