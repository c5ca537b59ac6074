package stores

import "errors"

// Sentinel errors. Backends translate their SDK's errors into these (wrapped
// with %w) so callers and the conformance suite can use errors.Is.
var (
	// ErrNotFound: no such row.
	ErrNotFound = errors.New("stores: not found")
	// ErrInvalidQuery: a query's filters or limit are not allowed.
	ErrInvalidQuery = errors.New("stores: invalid query")
	// ErrInvalidRecord: a batch holds a record no store should write.
	ErrInvalidRecord = errors.New("stores: invalid record")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("stores: store is closed")
	// ErrInvalidConfig: a backend's Config does not validate.
	ErrInvalidConfig = errors.New("stores: invalid config")
)
