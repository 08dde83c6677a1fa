package faults

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// TestBadInputAtVolume (scenario 6): a volume of malformed requests —
// header floods, huge tokens, random key IDs, slow clients within the
// timeouts — from one address while good traffic runs from others. The
// good traffic gets no wrong answer, the bad gets no 2xx and no 5xx, and
// the sidecar's RSS is reported before and after.
func TestBadInputAtVolume(t *testing.T) {
	sys := newSystem(t, "badinput", 1, keygatev1.ApiKeySpec{})
	a := sys.sidecars[0]
	k := sys.keys[0]
	rssBefore := rssMiB(t, a.proc.cmd.Process.Pid)
	good := startLoad(loadSpec{targets: []*sidecar{a}, auths: []string{k.basic(), "Bearer " + token(t, a, k.id, k.secret)},
		requests: pick(3000, 30000), maxTime: 2 * time.Minute, workers: 4})

	src := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 20)}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: (&net.Dialer{LocalAddr: src}).DialContext, MaxIdleConnsPerHost: 8}}
	var mu sync.Mutex
	counts := map[string]int{}
	note := func(kind string, code int) {
		mu.Lock()
		defer mu.Unlock()
		class := "other"
		switch {
		case code == 0:
			class = "closed"
		case code >= 500:
			class = "5xx"
		case code >= 400:
			class = "4xx"
		case code >= 200 && code < 300:
			class = "2xx"
		}
		counts[class]++
		counts[kind]++
	}
	send := func(kind string, header http.Header) {
		req, _ := http.NewRequest(http.MethodGet, a.base+"/charges", nil) //nolint:noctx // bounded by the client's timeout
		req.Header = header
		resp, err := hc.Do(req)
		if err != nil {
			note(kind, 0)
			return
		}
		_ = resp.Body.Close()
		note(kind, resp.StatusCode)
	}
	randomKeys := pick(2000, 10000)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := w; i < randomKeys; i += 4 {
				id := make([]byte, 10)
				_, _ = rand.Read(id)
				send("random key", http.Header{"Authorization": {basic("apk-"+hex.EncodeToString(id), "x")}})
			}
		})
	}
	wg.Go(func() {
		for range pick(50, 200) {
			send("huge token", http.Header{"Authorization": {"Bearer " + strings.Repeat("A", 1<<20)}})
			h := http.Header{}
			for j := range 500 {
				h.Set("X-Flood-"+strconv.Itoa(j), strings.Repeat("v", 60))
			}
			send("header flood", h)
			send("garbage bearer", http.Header{"Authorization": {"Bearer a.b.c"}})
		}
	})
	// Slow clients: connections that send half a request and wait, then go.
	wg.Go(func() {
		var conns []net.Conn
		for range pick(50, 200) {
			c, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 21)}}).Dial("tcp", strings.TrimPrefix(a.base, "http://"))
			if err != nil {
				note("slow", 0)
				continue
			}
			_, _ = c.Write([]byte("GET /charges HTTP/1.1\r\nHost: x\r\nAuthorization: Basic "))
			conns = append(conns, c)
		}
		time.Sleep(2 * time.Second) // within the 10 s header timeout: the slow clients' own pace
		for _, c := range conns {
			_ = c.Close()
			note("slow", 0)
		}
	})
	wg.Wait()
	l := good()
	rssAfter := rssMiB(t, a.proc.cmd.Process.Pid)
	fmt.Printf("faults: bad input: %d random key IDs, huge tokens, header floods, slow clients: bad answers %v; RSS %.1f MiB before, %.1f MiB after; good load: %s\n",
		randomKeys, counts, rssBefore, rssAfter, l)
	if counts["2xx"] != 0 || counts["5xx"] != 0 {
		t.Fatalf("malformed requests answered 2xx %d times, 5xx %d times", counts["2xx"], counts["5xx"])
	}
	l.check(t)
}

// rssMiB is a process's resident memory.
func rssMiB(t *testing.T, pid int) float64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	must(t, err)
	defer func() { _ = f.Close() }()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			return float64(kb) / 1024
		}
	}
	t.Fatal("no VmRSS")
	return 0
}
