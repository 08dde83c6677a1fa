package server

import (
	"sync"
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
	audit     *prometheus.CounterVec
	limited   *prometheus.CounterVec
	// byKey counts rate-limited requests per key ID, only when turned on
	// (EnableKeyLabels), for at most keyCap distinct key IDs; the rest count
	// under key_id="other".
	byKey  *prometheus.CounterVec
	keyCap int
	keysMu sync.Mutex
	keys   map[string]bool
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
		audit: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keygate_sidecar_audit_denials_total",
			Help: "Requests an Audit-mode policy forwarded that Enforce would refuse, by reason (unauthenticated, forbidden, cidr, revoked, ratelimited).",
		}, []string{"reason"}),
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keygate_sidecar_ratelimited_total",
			Help: "Requests and token requests refused (or, under Audit, flagged) for exceeding a key's rate limit, by policy.",
		}, []string{"policy"}),
	}
	m.allowed = m.decisions.WithLabelValues("allow", "")
	m.allowedH = m.latency.WithLabelValues("allow")
	m.Registry.MustRegister(m.decisions, m.issued, m.revoked, m.latency, m.audit, m.limited,
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

func (m *Metrics) auditDenial(reason string) {
	if m != nil {
		m.audit.WithLabelValues(reason).Inc()
	}
}

// EnableKeyLabels adds keygate_sidecar_ratelimited_by_key_total{policy,
// key_id}, labelled with at most maxKeys distinct key IDs (the rest count as
// "other"), so that the series stay bounded. Key IDs are public identifiers,
// not secrets.
func (m *Metrics) EnableKeyLabels(maxKeys int) {
	if m == nil || maxKeys <= 0 {
		return
	}
	m.byKey = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keygate_sidecar_ratelimited_by_key_total",
		Help: "Rate-limited requests by policy and key ID (opt-in; key IDs beyond the cap count as other).",
	}, []string{"policy", "key_id"})
	m.keyCap, m.keys = maxKeys, map[string]bool{}
	m.Registry.MustRegister(m.byKey)
}

func (m *Metrics) rateLimited(policy, keyID string) {
	if m == nil {
		return
	}
	m.limited.WithLabelValues(policy).Inc()
	if m.byKey == nil {
		return
	}
	m.keysMu.Lock()
	if !m.keys[keyID] {
		if len(m.keys) >= m.keyCap {
			keyID = "other"
		} else {
			m.keys[keyID] = true
		}
	}
	m.keysMu.Unlock()
	m.byKey.WithLabelValues(policy, keyID).Inc()
}
