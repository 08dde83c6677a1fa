package server

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/keygate-dev/keygate/sidecar/config"
)

// Metrics are the sidecar's Prometheus metrics, in their own registry.
type Metrics struct {
	Registry  *prometheus.Registry
	decisions *prometheus.CounterVec
	issued    *prometheus.CounterVec
	revoked   prometheus.Counter
	latency   *prometheus.HistogramVec
	allowed   prometheus.Counter
	allowedH  prometheus.Observer
}

// NewMetrics registers the metrics; store feeds the bundle gauges.
func NewMetrics(store *config.Store) *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keygate_sidecar_decisions_total", Help: "Requests by decision result and reason.",
		}, []string{"result", "reason"}),
		issued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keygate_sidecar_tokens_issued_total", Help: "Tokens issued by kind (platform, client).",
		}, []string{"kind"}),
		revoked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "keygate_sidecar_tokens_revoked_total", Help: "Tokens revoked (persisted).",
		}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "keygate_sidecar_request_duration_seconds", Help: "Time from request to response, by result.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"result"}),
	}
	m.allowed = m.decisions.WithLabelValues("allow", "")
	m.allowedH = m.latency.WithLabelValues("allow")
	m.Registry.MustRegister(m.decisions, m.issued, m.revoked, m.latency,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "keygate_sidecar_bundle_age_seconds", Help: "Seconds since the bundle in force was loaded (-1: none).",
		}, func() float64 {
			st := store.Status()
			if !st.Loaded {
				return -1
			}
			return st.Age.Seconds()
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "keygate_sidecar_source_stale", Help: "1 while the bundle source (API server or file) is unreachable and the last good bundle is served.",
		}, func() float64 {
			if store.Status().Stale != nil {
				return 1
			}
			return 0
		}),
	)
	return m
}

func (m *Metrics) decision(result, reason string, d time.Duration) {
	if m == nil {
		return
	}
	if result == "allow" && reason == "" {
		m.allowed.Inc()
		m.allowedH.Observe(d.Seconds())
		return
	}
	m.decisions.WithLabelValues(result, reason).Inc()
	m.latency.WithLabelValues(result).Observe(d.Seconds())
}

func (m *Metrics) tokenIssued(kind string) {
	if m != nil {
		m.issued.WithLabelValues(kind).Inc()
	}
}

func (m *Metrics) tokenRevoked() {
	if m != nil {
		m.revoked.Inc()
	}
}
