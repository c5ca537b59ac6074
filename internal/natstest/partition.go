package natstest

import (
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// Partition is a TCP proxy between clients and a NATS server that can cut
// the link both ways, as a network partition does: while cut, bytes stay
// in the kernel's buffers on each side and connections stay open (nothing
// is reset), and when it heals they flow again — as TCP retransmission
// makes a healed partition look to the two ends. A client connected
// through it therefore sees no disconnect, only requests that go
// unanswered, and requests it gave up on may still reach the server after
// the heal; a proxy that closed connections would test reconnect handling
// instead.
type Partition struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	cut    bool
	closed bool
	healed *sync.Cond
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

// NewPartition starts a proxy to target (a nats:// URL or host:port),
// healed. It is closed, with every connection through it, when the test
// ends.
func NewPartition(t testing.TB, target string) *Partition {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Partition{ln: ln, target: strings.TrimPrefix(target, "nats://"), conns: map[net.Conn]struct{}{}}
	p.healed = sync.NewCond(&p.mu)
	t.Cleanup(p.close)
	p.wg.Go(p.accept)
	return p
}

// URL is the address clients connect to instead of the server's.
func (p *Partition) URL() string { return "nats://" + p.ln.Addr().String() }

// Cut stops carrying bytes, both ways, on every connection through the
// proxy, current and future.
func (p *Partition) Cut() { p.set(true) }

// Heal carries bytes again, the held ones first.
func (p *Partition) Heal() { p.set(false) }

func (p *Partition) set(cut bool) {
	p.mu.Lock()
	p.cut = cut
	p.mu.Unlock()
	p.healed.Broadcast()
}

// close stops listening, closes every connection and waits for the
// goroutines that carried them.
func (p *Partition) close() {
	_ = p.ln.Close()
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.healed.Broadcast()
	p.wg.Wait()
}

func (p *Partition) accept() {
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		out, err := net.DialTimeout("tcp", p.target, time.Second)
		if err != nil {
			_ = in.Close() // the server is not listening: refuse, as it would
			continue
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			_ = in.Close()
			_ = out.Close()
			return
		}
		p.conns[in], p.conns[out] = struct{}{}, struct{}{}
		p.mu.Unlock()
		p.wg.Go(func() { p.pipe(in, out) })
		p.wg.Go(func() { p.pipe(out, in) })
	}
}

// pipe copies src to dst, holding every chunk while the link is cut. When
// either side ends, it closes both, which ends the other direction too.
func (p *Partition) pipe(src, dst net.Conn) {
	defer func() {
		_ = src.Close()
		_ = dst.Close()
		p.mu.Lock()
		delete(p.conns, src)
		delete(p.conns, dst)
		p.mu.Unlock()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			for p.cut && !p.closed {
				p.healed.Wait()
			}
			p.mu.Unlock()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
