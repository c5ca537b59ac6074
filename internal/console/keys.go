package console

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"
)

// ErrInvalidKeys: the API keys file, or a key's name or role, is not valid.
var ErrInvalidKeys = errors.New("console: invalid API keys")

// Role is what a key may read.
type Role string

// Roles. read is everything the console serves; stats only the stats
// endpoint (a monitoring system's key). A new role is a new entry in
// rolePermissions.
const (
	RoleRead  Role = "read"
	RoleStats Role = "stats"
)

// permission is what a route needs.
type permission string

const (
	permRead  permission = "read"  // the audit: changes, history, issues, locks, dead letters, pages
	permStats permission = "stats" // counters and lag only
)

var rolePermissions = map[Role][]permission{
	RoleRead:  {permRead, permStats},
	RoleStats: {permStats},
}

// Roles lists the known roles.
func Roles() []string {
	out := make([]string, 0, len(rolePermissions))
	for r := range rolePermissions {
		out = append(out, string(r))
	}
	slices.Sort(out)
	return out
}

func (r Role) allows(p permission) bool { return slices.Contains(rolePermissions[r], p) }

// Key is one line of the keys file: a key's name, its role and the SHA-256
// of the key. The key itself is never stored.
//
// Why SHA-256 and not a password hash (bcrypt, argon2): the keys are 256
// random bits made by NewKey, not passwords people choose, so a slow hash
// adds no protection against guessing — nobody can enumerate 2^256 — while
// it would cost every API request tens of milliseconds.
type Key struct {
	Name string
	Role Role
	Hash [sha256.Size]byte
}

// KeyPrefix starts every key, so that a leaked one is recognisable (secret
// scanners) and a file of hashes is never mistaken for keys.
const KeyPrefix = "afc_"

var keyName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$`)

// NewKey makes a key for name with role: the key to hand out once, and the
// line to append to the keys file.
func NewKey(name string, role Role) (key string, line string, err error) {
	if !keyName.MatchString(name) {
		return "", "", fmt.Errorf("%w: name %q: want 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit", ErrInvalidKeys, name)
	}
	if _, ok := rolePermissions[role]; !ok {
		return "", "", fmt.Errorf("%w: role %q: want one of %s", ErrInvalidKeys, role, strings.Join(Roles(), ", "))
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", "", err
	}
	key = KeyPrefix + base64.RawURLEncoding.EncodeToString(b)
	h := sha256.Sum256([]byte(key))
	return key, fmt.Sprintf("%s %s sha256:%s\n", name, role, hex.EncodeToString(h[:])), nil
}

// ParseKeys reads a keys file: one key per line, "NAME ROLE sha256:HEX";
// blank lines and lines starting with # are ignored.
func ParseKeys(r io.Reader) ([]Key, error) {
	var keys []Key
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 3 {
			return nil, fmt.Errorf("%w: line %d: want NAME ROLE sha256:HEX", ErrInvalidKeys, n)
		}
		k := Key{Name: f[0], Role: Role(f[1])}
		if !keyName.MatchString(k.Name) {
			return nil, fmt.Errorf("%w: line %d: bad name %q", ErrInvalidKeys, n, k.Name)
		}
		if _, ok := rolePermissions[k.Role]; !ok {
			return nil, fmt.Errorf("%w: line %d: unknown role %q (known: %s)", ErrInvalidKeys, n, k.Role, strings.Join(Roles(), ", "))
		}
		hx, ok := strings.CutPrefix(f[2], "sha256:")
		b, err := hex.DecodeString(hx)
		if !ok || err != nil || len(b) != sha256.Size {
			return nil, fmt.Errorf("%w: line %d: the hash must be sha256: and 64 hex digits", ErrInvalidKeys, n)
		}
		copy(k.Hash[:], b)
		keys = append(keys, k)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return keys, nil
}

// LoadKeys reads the keys file at path.
func LoadKeys(path string) ([]Key, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidKeys, err)
	}
	defer f.Close()
	keys, err := ParseKeys(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%w: %s holds no keys (auditflow console key new --name NAME adds one)", ErrInvalidKeys, path)
	}
	return keys, nil
}

// AppendKey adds a keys-file line to path, creating the file readable by
// its owner only.
func AppendKey(path, line string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(line); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// match returns the key whose hash is presented's. Every entry is compared
// in constant time, and all of them are, so the time taken says nothing
// about which hash (or how much of one) matched.
func match(keys []Key, presented string) (Key, bool) {
	h := sha256.Sum256([]byte(presented))
	var found Key
	ok := 0
	for _, k := range keys {
		if subtle.ConstantTimeCompare(h[:], k.Hash[:]) == 1 {
			found, ok = k, 1
		}
	}
	return found, ok == 1
}

// keysStamp is what says a keys file changed: its size and modification
// time (zero when it cannot be read).
type keysStamp struct {
	size  int64
	mtime time.Time
}

func stampOf(path string) keysStamp {
	fi, err := os.Stat(path)
	if err != nil {
		return keysStamp{}
	}
	return keysStamp{size: fi.Size(), mtime: fi.ModTime()}
}

// keysPoll is how often Run looks at the keys file.
const keysPoll = time.Second

// watchKeys reloads the keys file whenever its size or modification time
// changes, until ctx ends: a key made with `auditflow console key new`
// counts within a second, and one whose line is deleted stops counting.
func (s *Server) watchKeys(ctx context.Context) {
	t := time.NewTicker(keysPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if st := stampOf(s.cfg.KeysFile); st != s.keysSeen {
			s.keysSeen = st
			_ = s.ReloadKeys()
		}
	}
}

// ReloadKeys reads Config.KeysFile again and lets in exactly its keys. If
// it does not load, the keys in force stay, and the error is logged and
// returned.
func (s *Server) ReloadKeys() error {
	if s.cfg.KeysFile == "" || s.cfg.NoAuth {
		return nil
	}
	keys, err := LoadKeys(s.cfg.KeysFile)
	if err != nil {
		s.log.Warn("console: the keys file did not load; the keys loaded before stay in force", "file", s.cfg.KeysFile, "err", err)
		return err
	}
	s.keys.Store(&keys)
	s.log.Info("console: keys reloaded", "file", s.cfg.KeysFile, "keys", len(keys))
	return nil
}

// unauthorized says why a request was not let in, and what to do.
func (s *Server) unauthorized(r *http.Request) string {
	const how = "send it as 'Authorization: Bearer KEY'"
	if s.cfg.KeysFile == "" {
		return "a valid API key is required: " + how
	}
	if r.Header.Get("Authorization") == "" {
		return fmt.Sprintf("a valid API key is required: %s (auditflow console key new --keys-file %s makes one)", how, s.cfg.KeysFile)
	}
	return fmt.Sprintf("this API key is not in the keys file of the running console, %s (%s). A key added to that file counts within a second; "+
		"a key made for another file (another --keys-file or --data-dir) does not", s.cfg.KeysFile, how)
}
