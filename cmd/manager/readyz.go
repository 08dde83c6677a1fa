package main

import (
	"net/http"
	"time"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
)

// maxReadyzWait bounds ?wait= on /readyz.
const maxReadyzWait = 30 * time.Second

// readyzWaiter is the manager with every readiness check made patient:
// /readyz?wait=5s holds the request until the check passes or 5 s have gone
// by. The startup probe uses it, so a normal start records no failed probe
// (the kubelet records a Warning event for each one); plain /readyz answers
// at once as before.
type readyzWaiter struct{ ctrl.Manager }

func (m readyzWaiter) AddReadyzCheck(name string, check healthz.Checker) error {
	return m.Manager.AddReadyzCheck(name, waiting(check))
}

// waiting returns check retried every 100 ms for the duration the request
// asks with ?wait= (at most maxReadyzWait), until it passes.
func waiting(check healthz.Checker) healthz.Checker {
	return func(req *http.Request) error {
		err := check(req)
		if err == nil {
			return nil
		}
		wait, perr := time.ParseDuration(req.URL.Query().Get("wait"))
		if perr != nil || wait <= 0 {
			return err
		}
		deadline := time.NewTimer(min(wait, maxReadyzWait))
		defer deadline.Stop()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-req.Context().Done():
				return err
			case <-deadline.C:
				return err
			case <-tick.C:
				if err = check(req); err == nil {
					return nil
				}
			}
		}
	}
}
