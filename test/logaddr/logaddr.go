// Package logaddr reads the addresses a child process reports in its JSON
// log. Tests start keygate's processes on port 0 and learn the bound
// addresses from the log, rather than picking a free port and binding it
// later (another process may take the port in between).
package logaddr

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"
)

// pollInterval is how often the log file is read again.
const pollInterval = 20 * time.Millisecond

// Wait polls the JSON log at path until a line whose "msg" is msg and whose
// fields include every key=value in match appears, and returns that line's
// fields. It gives up when ctx ends or exited reports that the process
// has gone (exited may be nil).
func Wait(ctx context.Context, path, msg string, match map[string]string, exited func() bool) (map[string]any, error) {
	for {
		if fields, ok := find(path, msg, match); ok {
			return fields, nil
		}
		if exited != nil && exited() {
			if fields, ok := find(path, msg, match); ok {
				return fields, nil
			}
			return nil, fmt.Errorf("process exited before logging %q (log %s)", msg, path)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("no %q in %s: %w", msg, path, ctx.Err())
		case <-time.After(pollInterval):
		}
	}
}

func find(path, msg string, match map[string]string) (map[string]any, bool) {
	data, err := os.ReadFile(path) //nolint:gosec // a test's own log file
	if err != nil {
		return nil, false
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if !bytes.Contains(line, []byte(msg)) {
			continue
		}
		var fields map[string]any
		if json.Unmarshal(line, &fields) != nil || fields["msg"] != msg {
			continue
		}
		ok := true
		for k, v := range match {
			if fmt.Sprint(fields[k]) != v {
				ok = false
			}
		}
		if ok {
			return fields, true
		}
	}
	return nil, false
}

// Sidecar waits for bin/sidecar's "Started sidecar" line and returns the
// main and admin listeners' addresses (host:port).
func Sidecar(ctx context.Context, path string, exited func() bool) (main, admin string, err error) {
	f, err := Wait(ctx, path, "Started sidecar", nil, exited)
	if err != nil {
		return "", "", err
	}
	main, _ = f["listen"].(string)
	admin, _ = f["admin"].(string)
	if main == "" || admin == "" {
		return "", "", fmt.Errorf("sidecar log line without addresses: %v", f)
	}
	return main, admin, nil
}

// Manager waits for bin/manager to report the bound address of one of its
// servers ("health probe" or "metrics") and returns it (host:port).
func Manager(ctx context.Context, path, server string, exited func() bool) (string, error) {
	f, err := Wait(ctx, path, "starting server", map[string]string{"name": server}, exited)
	if err != nil {
		return "", err
	}
	addr, _ := f["addr"].(string)
	if addr == "" {
		return "", fmt.Errorf("manager log line without an address: %v", f)
	}
	return addr, nil
}
