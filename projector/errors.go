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

// ErrStoreBehind: the store lacks events its consumer has already
// acknowledged — it has recorded no progress for the consumer (a new, lost
// or reset store, or the wrong one) while the consumer's ack floor is past
// the first event. New refuses to consume into it unless Config.Rebuild.
var ErrStoreBehind = errors.New("projector: the store is behind its consumer")

// ErrHeldCapReached: an event of a newer schema version could not be
// parked for a newer projector, since Config.HeldCap events already wait;
// it is dead-lettered instead (see the held stream in held.go).
var ErrHeldCapReached = errors.New("the held stream is full for this consumer")
