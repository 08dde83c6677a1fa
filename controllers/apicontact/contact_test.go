package apicontact

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	dto "github.com/prometheus/client_model/go"
	"k8s.io/client-go/rest"
)

// TestRequestsWaitForTheAPIServer: while /readyz fails, requests through
// the wrapped config are held (not failed); once it answers 200 they go on.
// A request whose context ends first fails.
func TestRequestsWaitForTheAPIServer(t *testing.T) {
	var up atomic.Bool
	up.Store(true)
	var served atomic.Int32
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !up.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		if r.URL.Path != "/readyz" {
			served.Add(1)
		}
		_, _ = w.Write([]byte("ok"))
	}))
	defer api.Close()

	cfg := &rest.Config{Host: api.URL}
	c, err := New(cfg, logr.Discard())
	if err != nil {
		t.Fatal(err)
	}
	c.Interval = 10 * time.Millisecond
	c.Wrap(cfg)
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = c.Start(ctx) }()

	get := func(ctx context.Context) error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, api.URL+"/api/v1/namespaces", nil)
		resp, err := hc.Do(req)
		if err == nil {
			_ = resp.Body.Close()
		}
		return err
	}
	if err := get(ctx); err != nil {
		t.Fatalf("request in contact: %v", err)
	}

	up.Store(false)
	waitUntil(t, func() bool { return !isClosed(c.current()) })
	before := served.Load()
	done := make(chan error, 1)
	go func() { done <- get(ctx) }()
	waitUntil(t, func() bool { return gaugeValue(waiting) == 1 })
	select {
	case err := <-done:
		t.Fatalf("request finished while the API server was down: %v", err)
	default:
	}
	short, cancelShort := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancelShort()
	if err := get(short); err == nil {
		t.Fatal("a request whose context ended while waiting succeeded")
	}
	if gaugeValue(reachable) != 0 {
		t.Fatal("keygate_apiserver_reachable not 0 during the outage")
	}

	up.Store(true)
	if err := <-done; err != nil {
		t.Fatalf("held request after the API server returned: %v", err)
	}
	if served.Load() != before+1 {
		t.Fatalf("held request served %d times, want once", served.Load()-before)
	}
	if gaugeValue(reachable) != 1 {
		t.Fatal("keygate_apiserver_reachable not 1 after the outage")
	}
}

// TestForbiddenReadyzIsContact: a cluster that refuses this identity
// /readyz still answers; requests must never be held for that.
func TestForbiddenReadyzIsContact(t *testing.T) {
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/readyz" {
			http.Error(w, "forbidden", http.StatusForbidden)
			return
		}
		_, _ = w.Write([]byte("ok"))
	}))
	defer api.Close()
	c, err := New(&rest.Config{Host: api.URL}, logr.Discard())
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		start := time.Now()
		c.observe(c.ready(context.Background()), start)
	}
	if !isClosed(c.current()) {
		t.Fatal("requests held although the API server answered (403)")
	}
}

// TestAnsweredRequestsAreContact: on a busy API server /readyz can answer
// later than the probe's timeout while the manager's requests are answered;
// requests must not be held then. Without answered requests the same slow
// probes lose contact.
func TestAnsweredRequestsAreContact(t *testing.T) {
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/readyz" {
			<-r.Context().Done() // slower than any probe's timeout
			return
		}
		_, _ = w.Write([]byte("ok"))
	}))
	defer api.Close()
	cfg := &rest.Config{Host: api.URL}
	c, err := New(cfg, logr.Discard())
	if err != nil {
		t.Fatal(err)
	}
	c.Timeout = 20 * time.Millisecond
	c.Wrap(cfg)
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	probe := func() {
		start := time.Now()
		c.observe(c.ready(context.Background()), start)
	}
	for i := range 5 {
		resp, err := hc.Get(api.URL + "/api/v1/namespaces")
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		probe()
		if !isClosed(c.current()) {
			t.Fatalf("probe %d: requests held although the API server answered them", i)
		}
	}
	// No request answered for an interval: the slow probes are all there is.
	c.lastAnswer.Store(time.Now().Add(-2 * c.Interval).UnixNano())
	for range failuresToLose {
		probe()
	}
	if isClosed(c.current()) {
		t.Fatal("requests not held after failed probes and no answered request")
	}
	c.release()
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func gaugeValue(g interface{ Write(*dto.Metric) error }) float64 {
	m := &dto.Metric{}
	_ = g.Write(m)
	return m.GetGauge().GetValue()
}
