package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/rbuild/rbuild/internal/testenv"
)

// registry is Debian's docker-registry (distribution 2.8) on a free
// loopback port, and in front of it a proxy that counts the bytes builders
// pull and push. Builders only see the proxy's address.
type registry struct {
	// Addr is the proxy, host:port: what builders use.
	Addr string
	// Direct is the registry itself, used to push base images uncounted.
	Direct string
	// Version is the registry server's version line.
	Version string

	pulled, pushed, requests atomic.Int64
}

// traffic is what went through the proxy since the last reset.
type traffic struct {
	Pulled, Pushed, Requests int64
}

func (r *registry) reset() {
	r.pulled.Store(0)
	r.pushed.Store(0)
	r.requests.Store(0)
}

func (r *registry) traffic() traffic {
	return traffic{Pulled: r.pulled.Load(), Pushed: r.pushed.Load(), Requests: r.requests.Load()}
}

func startRegistry(dir string) (*registry, error) {
	reg, err := testenv.StartRegistry(dir, "")
	if err != nil {
		return nil, err
	}
	atStop(reg.Stop)
	direct := reg.Addr
	r := &registry{Direct: direct, Version: testenv.RegistryVersion()}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r.Addr = ln.Addr().String()
	target := &url.URL{Scheme: "http", Host: direct}
	rp := httputil.NewSingleHostReverseProxy(target)
	// Layer uploads and downloads stream through at once.
	rp.FlushInterval = -1
	rp.Transport = &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}
	srv := &http.Server{Handler: r.count(rp)}
	go func() { _ = srv.Serve(ln) }()
	atStop(func() {
		c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(c)
	})
	logf("registry %s (docker-registry on %s)", r.Addr, direct)
	return r, nil
}

// count wraps the proxy: request bodies are bytes pushed, response bodies
// bytes pulled. The Host header stays the proxy's, so the registry's
// upload Locations point back through the proxy.
func (r *registry) count(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.requests.Add(1)
		if req.Body != nil {
			req.Body = &countingReader{r: req.Body, n: &r.pushed}
		}
		next.ServeHTTP(&countingWriter{ResponseWriter: w, n: &r.pulled}, req)
	})
}

type countingReader struct {
	r io.ReadCloser
	n *atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func (c *countingReader) Close() error { return c.r.Close() }

type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n.Add(int64(n))
	return n, err
}

func (c *countingWriter) Flush() {
	if f, ok := c.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}
