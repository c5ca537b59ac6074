package natsconn

import (
	"fmt"
	"net/url"
	"strings"

	"github.com/nats-io/nats.go"
)

// DefaultInboxRoot starts every default inbox prefix: nats.go's own root,
// so that a reply inbox still reads as one (internal/natsperm matches
// violations on _INBOX.… as a request's).
const DefaultInboxRoot = "_INBOX"

// Roles a command connects as, for the inbox prefix when no user name is
// known (Config.Role). They are the user names deploy/nats/accounts.conf
// gives these roles; a runner's is RunnerRole(pipeline).
const (
	RoleAdmin     = "admin"     // auditflow init, auditflow restore
	RoleOperator  = "operator"  // every other auditflow command
	RoleConsole   = "console"   // auditflow console
	RoleProjector = "projector" // every projector
	RoleSIEM      = "siem"      // auditflow feed, export --format ndjson
)

// RunnerRole is the role of pipeline's runners: runner-<pipeline>, the
// pipeline written as in a subject (events.EncodeToken's encoding, which
// the caller applies: this package does not import events).
func RunnerRole(encodedPipeline string) string { return "runner-" + encodedPipeline }

// Inbox returns the subject prefix of the connection's reply inboxes
// (every request's reply, pull fetch, ordered consumer and KV watcher
// delivers to PREFIX.<random>), and where it comes from. The rule, first
// that applies:
//
//  1. --nats-inbox-prefix (AUDITFLOW_NATS_INBOX_PREFIX), or the NATS
//     context's inbox_prefix;
//  2. _INBOX.<user>, with the user name of the URL (user:password@) or of
//     the NATS context, if it can be written in a subject;
//  3. _INBOX.<role>, with the role the command sets (Config.Role);
//  4. nats.go's default, _INBOX.
//
// A server that gives each user permission to subscribe to
// _INBOX.<user>.> only (deploy/nats/accounts.conf) then keeps every
// role's replies from every other role. Its error wraps ErrInvalidConfig.
func (c Config) Inbox() (prefix, source string, err error) {
	if err := c.applyContext(); err != nil {
		return "", "", err
	}
	urls, _, err := c.load()
	if err != nil {
		return "", "", err
	}
	return c.inboxPrefix(urls)
}

// inboxPrefix applies Inbox's rule to c, whose URLs are urls.
func (c Config) inboxPrefix(urls string) (prefix, source string, err error) {
	if c.InboxPrefix != "" {
		if !subjectLike(c.InboxPrefix) {
			return "", "", fmt.Errorf("%w: --nats-inbox-prefix %q: not a subject prefix (tokens of letters, digits, '-', '_' and the like, separated by '.'; no '*', '>' or spaces)",
				ErrInvalidConfig, c.InboxPrefix)
		}
		return c.InboxPrefix, "--nats-inbox-prefix", nil
	}
	if u := urlUser(urls); subjectLike(u) {
		return DefaultInboxRoot + "." + u, "the URL's user", nil
	}
	if subjectLike(c.user) {
		return DefaultInboxRoot + "." + c.user, "the NATS context's user", nil
	}
	if subjectLike(c.Role) {
		return DefaultInboxRoot + "." + c.Role, "the command's role", nil
	}
	return strings.TrimSuffix(nats.InboxPrefix, "."), "nats.go's default", nil
}

// urlUser is the user name of the first URL that carries a user and a
// password (a URL with only a name carries a token, as nats.go reads it).
func urlUser(urls string) string {
	for p := range strings.SplitSeq(urls, ",") {
		p = strings.TrimSpace(p)
		if !strings.Contains(p, "://") {
			p = "nats://" + p
		}
		u, err := url.Parse(p)
		if err != nil || u.User == nil {
			continue
		}
		if _, ok := u.User.Password(); ok && u.User.Username() != "" {
			return u.User.Username()
		}
	}
	return ""
}

// subjectLike reports whether s can be written in a subject, as one or
// more literal tokens: no empty token, no wildcard, no white space or
// control character.
func subjectLike(s string) bool {
	if s == "" {
		return false
	}
	for tok := range strings.SplitSeq(s, ".") {
		if tok == "" || tok == "*" || tok == ">" {
			return false
		}
		for _, r := range tok {
			if r <= ' ' || r == 0x7f || r == '*' || r == '>' {
				return false
			}
		}
	}
	return true
}
