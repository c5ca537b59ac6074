package natstest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net"
	"sync"
	"time"
)

// routeProxy forwards the route connections into one cluster node. It
// exists so that a node can crash rather than shut down: a nats-server
// that shuts down hands its raft leaderships over first, which makes
// fail-over take milliseconds, while a crashed leader is only replaced
// after the raft election timeout (seconds). Cutting every route of a node
// before shutting it down makes the hand-over messages go nowhere, as
// they would from a killed process.
//
// Each proxied connection notes which server dialled it (the server id in
// the route's CONNECT, which the dialler sends first), so cut can also
// sever the connections a node opened into other nodes.
type routeProxy struct {
	addr   string // where the proxy listens (the node's advertised route address)
	target string // the node's real route listener

	mu     sync.Mutex
	ln     net.Listener
	conns  map[*proxyConn]struct{}
	banned map[string]bool // server ids of killed nodes
	wg     sync.WaitGroup
}

type proxyConn struct {
	in, out net.Conn
	dialer  string // server id of the dialling node, once known
}

func newRouteProxy(addr, target string) *routeProxy {
	return &routeProxy{addr: addr, target: target, conns: map[*proxyConn]struct{}{}, banned: map[string]bool{}}
}

// open starts listening. The port may be briefly unavailable right after
// close, so it tries for a while.
func (p *routeProxy) open() error {
	var ln net.Listener
	var err error
	for range 50 {
		if ln, err = net.Listen("tcp", p.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	p.wg.Go(func() { p.accept(ln) })
	return nil
}

func (p *routeProxy) accept(ln net.Listener) {
	for {
		in, err := ln.Accept()
		if err != nil {
			return // closed
		}
		out, err := net.DialTimeout("tcp", p.target, time.Second)
		if err != nil {
			_ = in.Close() // the node is not listening (yet): refuse, as it would
			continue
		}
		pc := &proxyConn{in: in, out: out}
		p.mu.Lock()
		if p.ln != ln { // closed meanwhile
			p.mu.Unlock()
			_ = in.Close()
			_ = out.Close()
			return
		}
		p.conns[pc] = struct{}{}
		p.mu.Unlock()
		p.wg.Go(func() { p.forward(pc) })
	}
}

// forward copies both ways until either side closes, noting the dialler's
// server id from its first line.
func (p *routeProxy) forward(pc *proxyConn) {
	done := make(chan struct{})
	go func() { // owned by forward, which waits for it below
		defer close(done)
		_, _ = io.Copy(pc.in, pc.out)
		_ = pc.in.Close()
	}()
	r := bufio.NewReaderSize(pc.in, 64<<10)
	if line, err := r.ReadSlice('\n'); err == nil {
		id := connectName(line)
		p.mu.Lock()
		pc.dialer = id
		banned := p.banned[id]
		p.mu.Unlock()
		if banned {
			err = net.ErrClosed // a killed node that has not stopped yet: it is gone
		} else {
			_, err = pc.out.Write(line)
		}
		if err == nil {
			_, _ = io.Copy(pc.out, r)
		}
	}
	_ = pc.out.Close()
	_ = pc.in.Close()
	<-done
	p.mu.Lock()
	delete(p.conns, pc)
	p.mu.Unlock()
}

// connectName extracts the server id from a route CONNECT line.
func connectName(line []byte) string {
	rest, ok := bytes.CutPrefix(line, []byte("CONNECT "))
	if !ok {
		return ""
	}
	var c struct {
		Name string `json:"name"`
	}
	if json.Unmarshal(bytes.TrimSpace(rest), &c) != nil {
		return ""
	}
	return c.Name
}

// cut closes the connections dialled by the server with id, and refuses
// its later ones: between its routes being cut and its shutdown, a killed
// node would otherwise reconnect and hand its leaderships over after all.
func (p *routeProxy) cut(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.banned[id] = true
	for pc := range p.conns {
		if pc.dialer == id {
			_ = pc.in.Close()
			_ = pc.out.Close()
		}
	}
}

// close stops listening and closes every connection, as a dead node's
// port would refuse and reset them.
func (p *routeProxy) close() {
	p.mu.Lock()
	if p.ln != nil {
		_ = p.ln.Close()
		p.ln = nil
	}
	for pc := range p.conns {
		_ = pc.in.Close()
		_ = pc.out.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}
