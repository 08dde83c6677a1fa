// Package apicontact bounds the manager's recovery from an API server
// outage. client-go's reflectors back off exponentially, with jitter, up to
// about a minute while list and watch requests fail; the backoff is not
// configurable through controller-runtime's cache, so work requested right
// after the API server returned waited up to a minute for the next attempt.
//
// Contact probes the API server's /readyz once a second with a client of its
// own. While the API server is unreachable, requests made through the
// manager's client (Wrap) wait for it instead of failing: a reflector's list
// then does not fail over and over, its backoff does not grow, and it
// completes as soon as the API server is ready again. A request whose
// context ends first fails as before. The wait is logged and exported as
// keygate_apiserver_* metrics.
package apicontact

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Defaults of Contact's probe.
const (
	DefaultInterval = time.Second
	DefaultTimeout  = time.Second
	// failuresToLose probes in a row must fail before requests are held, so
	// one slow answer does not stop the manager.
	failuresToLose = 2
)

var (
	reachable = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "keygate_apiserver_reachable",
		Help: "1 while the manager's probe of the API server's /readyz succeeds, 0 while it waits for the API server.",
	})
	waiting = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "keygate_apiserver_waiting_requests",
		Help: "Requests to the API server held until it is reachable again.",
	})
	outages = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "keygate_apiserver_outages_total",
		Help: "Times the manager lost contact with the API server.",
	})
	outageSeconds = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "keygate_apiserver_outage_seconds_total",
		Help: "Time spent without contact with the API server.",
	})
)

func init() {
	metrics.Registry.MustRegister(reachable, waiting, outages, outageSeconds)
	reachable.Set(1)
}

// Contact tracks whether the API server is reachable. Create it with New,
// wrap the manager's rest.Config with Wrap, and run Start (it is a
// manager.Runnable that runs on every replica, leader or not).
type Contact struct {
	probe    *http.Client
	url      string
	log      logr.Logger
	Interval time.Duration
	Timeout  time.Duration

	// lastAnswer is when a request through the wrapped config last got an
	// answer (UnixNano): proof of contact whatever the probe says.
	lastAnswer atomic.Int64

	mu       sync.Mutex
	back     chan struct{} // closed while in contact; a new open channel while waiting
	lostAt   time.Time
	failures int
}

// New makes a Contact for cfg. Call it before wrapping cfg: the probe uses
// its own, unwrapped client.
func New(cfg *rest.Config, log logr.Logger) (*Contact, error) {
	probeCfg := rest.CopyConfig(cfg)
	probeCfg.WrapTransport = nil
	hc, err := rest.HTTPClientFor(probeCfg)
	if err != nil {
		return nil, fmt.Errorf("API server probe client: %w", err)
	}
	base, _, err := rest.DefaultServerUrlFor(probeCfg)
	if err != nil {
		return nil, fmt.Errorf("API server URL: %w", err)
	}
	back := make(chan struct{})
	close(back)
	return &Contact{probe: hc, url: base.String() + "/readyz", log: log,
		Interval: DefaultInterval, Timeout: DefaultTimeout, back: back}, nil
}

// Wrap makes every request through cfg wait while the API server is
// unreachable.
func (c *Contact) Wrap(cfg *rest.Config) {
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { return roundTripper{c: c, next: rt} })
}

// NeedLeaderElection implements manager.LeaderElectionRunnable: every
// replica needs its own view of the API server.
func (c *Contact) NeedLeaderElection() bool { return false }

// Start probes until ctx ends.
func (c *Contact) Start(ctx context.Context) error {
	t := time.NewTicker(c.Interval)
	defer t.Stop()
	for {
		start := time.Now()
		c.observe(c.ready(ctx), start)
		select {
		case <-ctx.Done():
			c.release() // anything still waiting goes on and fails on its own
			return nil
		case <-t.C:
		}
	}
}

// ready asks the API server's /readyz once.
func (c *Contact) ready(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url, nil)
	if err != nil {
		return err
	}
	resp, err := c.probe.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	_ = resp.Body.Close()
	// Only a server error means "not ready" (a starting API server answers
	// 500). 401 or 403 — a cluster that does not let this identity read
	// /readyz — still proves the server is there: never hold requests for it.
	if resp.StatusCode >= http.StatusInternalServerError {
		return fmt.Errorf("/readyz answered %s", resp.Status)
	}
	return nil
}

// observe records the outcome of the probe started at start. A failed probe
// counts as a success when a request was answered since one interval
// before it started.
func (c *Contact) observe(err error, start time.Time) {
	if err != nil && c.lastAnswer.Load() >= start.Add(-c.Interval).UnixNano() {
		err = nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	inContact := isClosed(c.back)
	switch {
	case err == nil && !inContact:
		down := time.Since(c.lostAt)
		close(c.back)
		c.failures = 0
		reachable.Set(1)
		outageSeconds.Add(down.Seconds())
		c.log.Info("Regained contact with the API server; resuming held requests", "outage", down.Round(time.Millisecond))
	case err == nil:
		c.failures = 0
	case inContact:
		c.failures++
		if c.failures < failuresToLose {
			return
		}
		c.back = make(chan struct{})
		c.lostAt = time.Now()
		reachable.Set(0)
		outages.Inc()
		c.log.Error(err, "Lost contact with the API server; requests wait until it is ready again")
	}
}

func (c *Contact) release() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !isClosed(c.back) {
		close(c.back)
	}
}

// wait returns once the API server is reachable, or ctx's error.
func (c *Contact) wait(ctx context.Context) error {
	c.mu.Lock()
	back := c.back
	c.mu.Unlock()
	if isClosed(back) {
		return nil
	}
	waiting.Inc()
	defer waiting.Dec()
	select {
	case <-back:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for the API server: %w", ctx.Err())
	}
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

type roundTripper struct {
	c    *Contact
	next http.RoundTripper
}

func (t roundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	if err := t.c.wait(req.Context()); err != nil {
		return nil, err
	}
	resp, err := t.next.RoundTrip(req)
	// Any answer but a server error (a starting API server's 500, an
	// unavailable etcd's 503) shows the API server is there.
	if err == nil && resp.StatusCode < http.StatusInternalServerError {
		t.c.lastAnswer.Store(time.Now().UnixNano())
	}
	return resp, err
}

// WrappedRoundTripper lets client-go see the transport underneath.
func (t roundTripper) WrappedRoundTripper() http.RoundTripper { return t.next }

// current is the channel closed while in contact (for tests).
func (c *Contact) current() chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.back
}
