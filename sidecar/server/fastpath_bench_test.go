package server

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/keygate-dev/keygate/api/bundle"
	"github.com/keygate-dev/keygate/sidecar/bundletest"
	"github.com/keygate-dev/keygate/sidecar/config"
	"github.com/keygate-dev/keygate/sidecar/sidecartest"
)

// rawUpstream answers every request head it reads with a fixed small JSON
// response; it allocates nothing per request, so allocs/op of the benchmarks
// below are the sidecar's (and the raw client's, which allocates nothing).
func rawUpstream(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = ln.Close() })
	resp := []byte("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nDate: Mon, 01 Jan 2026 00:00:00 GMT\r\nContent-Length: 11\r\n\r\n{\"ok\":true}")
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer func() { _ = c.Close() }()
				br := bufio.NewReader(c)
				for {
					if err := skipHead(br); err != nil {
						return
					}
					if _, err := c.Write(resp); err != nil {
						return
					}
				}
			}()
		}
	}()
	return "http://" + ln.Addr().String()
}

// skipHead reads one message head (bodies are not sent by these benchmarks)
// and returns its Content-Length.
func skipHead(br *bufio.Reader) error {
	_, err := readHeadLength(br)
	return err
}

func readHeadLength(br *bufio.Reader) (int, error) {
	n := 0
	for {
		l, err := br.ReadSlice('\n')
		if err != nil {
			return 0, err
		}
		if len(l) <= 2 {
			return n, nil
		}
		if v, ok := bytes.CutPrefix(l, []byte("Content-Length: ")); ok {
			n, _ = strconv.Atoi(string(bytes.TrimSpace(v)))
		}
	}
}

// BenchmarkFastPath sends small authenticated GETs over one kept-alive
// connection through the fast path and reports allocations per request
// (the whole process: sidecar, raw client and raw upstream).
func BenchmarkFastPath(b *testing.B) {
	f := bundletest.New(bundle.AlgEdDSA)
	f.Bundle.Policy.Rules = []bundle.Rule{{Paths: []string{"/charges"}, Permission: "charges:Read"}}
	f.Bundle.Policy.APIKeyHeader = "X-Api-Key"
	f.AddKey("apk-07", []string{"charges:All"})
	store := &config.Store{}
	if _, err := store.Update(f.JSON()); err != nil {
		b.Fatal(err)
	}
	u, _ := url.Parse(rawUpstream(b))
	srv := New(Options{Store: store, Upstream: u, Metrics: NewMetrics(store), Log: slog.New(slog.DiscardHandler)})
	addr := serveFast(b, srv, testTimeouts)
	run := func(name, credentials string) {
		b.Run(name, func(b *testing.B) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			defer func() { _ = c.Close() }()
			req := []byte("GET /charges HTTP/1.1\r\nHost: app\r\nUser-Agent: bench\r\nAccept: */*\r\n" + credentials + "\r\n\r\n")
			br := bufio.NewReader(c)
			buf := make([]byte, 64)
			roundTrip := func() {
				if _, err := c.Write(req); err != nil {
					b.Fatal(err)
				}
				l, err := br.ReadSlice('\n')
				if err != nil || !bytes.HasPrefix(l, []byte("HTTP/1.1 200 ")) {
					b.Fatalf("response %q: %v", l, err)
				}
				n, err := readHeadLength(br)
				if err != nil || n > len(buf) {
					b.Fatalf("head: %d %v", n, err)
				}
				if _, err := io.ReadFull(br, buf[:n]); err != nil {
					b.Fatal(err)
				}
			}
			for range 200 { // warm the connection, caches and pools
				roundTrip()
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				roundTrip()
			}
		})
	}
	run("basic", "Authorization: "+sidecartest.Basic("apk-07", f.Secrets["apk-07"]))
	run("apikey", "X-Api-Key: apk-07:"+f.Secrets["apk-07"])
	resp, err := http.Post("http://"+addr+"/api/token", "application/json",
		strings.NewReader(`{"apiKey":"apk-07","secret":"`+f.Secrets["apk-07"]+`"}`))
	if err != nil {
		b.Fatal(err)
	}
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&tok); err != nil || resp.StatusCode != http.StatusCreated {
		b.Fatalf("token: %d %v", resp.StatusCode, err)
	}
	_ = resp.Body.Close()
	run("bearer-eddsa", "Authorization: Bearer "+tok.AccessToken)
}
