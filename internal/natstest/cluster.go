package natstest

import (
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Cluster is a JetStream cluster of in-process servers for tests.
type Cluster struct {
	t    testing.TB
	name string
	log  *slog.Logger

	mu      sync.Mutex
	servers []*server.Server // nil while down
	ids     []string         // server id of each node's latest start
	opts    []*server.Options
	proxies []*routeProxy // route traffic into each node; see routeProxy
}

// StartCluster starts an n-node JetStream cluster and waits until it has a
// meta leader and every node is current.
//
// Each node has its own store directory and fixed ports on 127.0.0.1, so
// Restart brings a node back as it was: a client port, a route port, and
// a route proxy port that the node advertises and the other nodes' routes
// point at (see Kill). The cluster is shut down when the test ends.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	if n < 1 {
		t.Fatalf("natstest: cluster of %d nodes", n)
	}
	ports := freePorts(t, 3*n)
	c := &Cluster{t: t, name: "auditflow-test", log: Logger(t), servers: make([]*server.Server, n), ids: make([]string, n),
		opts: make([]*server.Options, n), proxies: make([]*routeProxy, n)}
	routes := make([]*url.URL, n)
	for i := range n {
		proxy := fmt.Sprintf("127.0.0.1:%d", ports[2*n+i])
		c.proxies[i] = newRouteProxy(proxy, fmt.Sprintf("127.0.0.1:%d", ports[n+i]))
		routes[i] = &url.URL{Scheme: "nats-route", Host: proxy}
	}
	for i := range n {
		c.opts[i] = &server.Options{
			ServerName: fmt.Sprintf("n%d", i),
			Host:       "127.0.0.1",
			Port:       ports[i],
			JetStream:  true,
			StoreDir:   t.TempDir(),
			NoSigs:     true,
			// A node retries routes to a dead peer every second; log that
			// once a minute, not at every attempt.
			ReconnectErrorReports: 60,
			Cluster: server.ClusterOpts{
				Name:      c.name,
				Host:      "127.0.0.1",
				Port:      ports[n+i],
				Advertise: c.proxies[i].addr, // so that gossip, too, goes through the proxy
			},
			Routes: routes, // a route to itself is detected and dropped
		}
	}
	t.Cleanup(c.shutdownAll)
	// One after the other: each node's routes to the nodes already up
	// connect at once, so the mesh forms without waiting for route retries
	// (a second each).
	for i := range n {
		if err := c.start(i); err != nil {
			t.Fatal(err)
		}
	}
	c.waitReady(30 * time.Second)
	return c
}

// freePorts picks n distinct free TCP ports on 127.0.0.1.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	ports := make([]int, 0, n)
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// start starts node i and its route proxy. It may run in another
// goroutine than the test's, so it returns errors instead of failing.
func (c *Cluster) start(i int) error {
	s, err := server.NewServer(c.opts[i])
	if err != nil {
		return fmt.Errorf("natstest: node %d: %w", i, err)
	}
	s.SetLoggerV2(&serverLog{l: c.log, name: c.opts[i].ServerName}, false, false, false)
	go s.Start() // the server owns this goroutine; Shutdown ends it
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return fmt.Errorf("natstest: node %d not ready after 10s", i)
	}
	if err := c.proxies[i].open(); err != nil {
		s.Shutdown()
		return fmt.Errorf("natstest: node %d: route proxy: %w", i, err)
	}
	c.mu.Lock()
	c.servers[i], c.ids[i] = s, s.ID()
	c.mu.Unlock()
	return nil
}

// waitReady waits until a meta leader knows every running node as a peer
// and every running node is current.
func (c *Cluster) waitReady(timeout time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if c.ready() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.t.Fatalf("natstest: cluster not ready after %s", timeout)
}

func (c *Cluster) ready() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	var leader *server.Server
	running := 0
	for _, s := range c.servers {
		if s == nil {
			continue
		}
		running++
		if !s.JetStreamIsCurrent() {
			return false
		}
		if s.JetStreamIsLeader() {
			leader = s
		}
	}
	return leader != nil && len(leader.JetStreamClusterPeers()) >= running
}

// URLs is the comma-separated list of the nodes' client URLs.
func (c *Cluster) URLs() string {
	var u string
	for i, o := range c.opts {
		if i > 0 {
			u += ","
		}
		u += fmt.Sprintf("nats://127.0.0.1:%d", o.Port)
	}
	return u
}

// Connect opens a client connection that knows every node and reconnects
// quickly and forever, as a production client riding out fail-overs
// should. It is closed when the test ends.
func (c *Cluster) Connect(t testing.TB, opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	opts = append([]nats.Option{nats.Name(t.Name()), nats.MaxReconnects(-1),
		nats.ReconnectWait(100 * time.Millisecond), nats.ReconnectJitter(100*time.Millisecond, 0)}, opts...)
	nc, err := nats.Connect(c.URLs(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// Server returns node i, or nil while it is down.
func (c *Cluster) Server(i int) *server.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.servers[i]
}

// Size is the number of nodes, running or not.
func (c *Cluster) Size() int { return len(c.opts) }

// StreamLeader returns the index of the node that leads stream (in the
// default account), or -1 if none does right now.
func (c *Cluster) StreamLeader(stream string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, s := range c.servers {
		if s != nil && s.JetStreamIsStreamLeader(server.DEFAULT_GLOBAL_ACCOUNT, stream) {
			return i
		}
	}
	return -1
}

// WaitStreamLeader waits up to timeout for stream to have a leader and
// returns its index.
func (c *Cluster) WaitStreamLeader(stream string, timeout time.Duration) int {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if i := c.StreamLeader(stream); i >= 0 {
			return i
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("natstest: stream %s has no leader after %s", stream, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// MetaLeader returns the index of the JetStream meta leader, or -1.
func (c *Cluster) MetaLeader() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, s := range c.servers {
		if s != nil && s.JetStreamIsLeader() {
			return i
		}
	}
	return -1
}

// Kill crashes node i, as kill -9 of a nats-server process would: its
// routes are cut first (so it cannot hand its raft leaderships over, and
// the rest of the cluster elects new leaders only after the election
// timeout, about 4 to 9 s), then it stops and its clients are
// disconnected. Its store directory and ports are kept for Restart.
func (c *Cluster) Kill(i int) {
	c.mu.Lock()
	s, id := c.servers[i], c.ids[i]
	c.servers[i] = nil
	c.mu.Unlock()
	if s == nil {
		return
	}
	c.proxies[i].close()
	for j, p := range c.proxies {
		if j != i {
			p.cut(id)
		}
	}
	s.Shutdown()
	s.WaitForShutdown()
}

// Shutdown stops node i gracefully: it hands its raft leaderships to
// other nodes first, so fail-over takes milliseconds (a rolling restart).
// Its store directory and ports are kept for Restart.
func (c *Cluster) Shutdown(i int) {
	c.mu.Lock()
	s := c.servers[i]
	c.servers[i] = nil
	c.mu.Unlock()
	if s == nil {
		return
	}
	s.Shutdown()
	s.WaitForShutdown()
	c.proxies[i].close()
}

// Restart starts node i again with its store directory and ports, and
// waits until it has rejoined the meta group. Its streams may still be
// catching up.
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	if c.Server(i) != nil {
		c.t.Fatalf("natstest: node %d is running", i)
	}
	if err := c.start(i); err != nil {
		c.t.Fatal(err)
	}
	c.waitReady(30 * time.Second)
}

// StepDown makes stream's leader hand its leadership to another node, as
// an operator's "nats stream cluster step-down" does, and returns the new
// leader's index.
func (c *Cluster) StepDown(stream string) int {
	c.t.Helper()
	old := c.WaitStreamLeader(stream, 10*time.Second)
	if err := c.Server(old).JetStreamStepdownStream(server.DEFAULT_GLOBAL_ACCOUNT, stream); err != nil {
		c.t.Fatalf("natstest: step down %s on node %d: %v", stream, old, err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if i := c.StreamLeader(stream); i >= 0 && i != old {
			return i
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.t.Fatalf("natstest: stream %s still led by node %d after step-down", stream, old)
	return -1
}

func (c *Cluster) shutdownAll() {
	for i := range c.opts {
		c.Shutdown(i)
	}
}

// serverLog passes a server's warnings and errors to a slog.Logger.
type serverLog struct {
	l    *slog.Logger
	name string
}

func (a *serverLog) Noticef(string, ...any) {}
func (a *serverLog) Tracef(string, ...any)  {}
func (a *serverLog) Debugf(string, ...any)  {}
func (a *serverLog) Warnf(f string, v ...any) {
	a.l.Warn(fmt.Sprintf(f, v...), "node", a.name)
}
func (a *serverLog) Errorf(f string, v ...any) {
	a.l.Error(fmt.Sprintf(f, v...), "node", a.name)
}
func (a *serverLog) Fatalf(f string, v ...any) {
	a.l.Error("fatal: "+fmt.Sprintf(f, v...), "node", a.name)
}
