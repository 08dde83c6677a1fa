package config

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"
)

// PollInterval is how often file sources are checked for changes.
const PollInterval = 200 * time.Millisecond

// WatchFile calls fn with the content of path now and whenever it changes,
// until ctx ends. A missing or unreadable file is reported to onErr.
func WatchFile(ctx context.Context, path string, fn func([]byte) error, onErr func(error)) {
	var last []byte
	var lastMod time.Time
	var lastSize int64 = -1
	check := func() {
		fi, err := os.Stat(path)
		if err != nil {
			onErr(fmt.Errorf("stat %s: %w", path, err))
			return
		}
		if fi.ModTime().Equal(lastMod) && fi.Size() == lastSize && last != nil {
			return
		}
		b, err := os.ReadFile(filepath.Clean(path)) // #nosec G304 -- path comes from the --bundle-file flag
		if err != nil {
			onErr(fmt.Errorf("read %s: %w", path, err))
			return
		}
		lastMod, lastSize = fi.ModTime(), fi.Size()
		if last != nil && bytes.Equal(b, last) {
			return
		}
		if err := fn(b); err != nil {
			onErr(err)
			return
		}
		last = b
		onErr(nil)
	}
	check()
	t := time.NewTicker(PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			check()
		}
	}
}

// WatchBundleFile keeps store loaded from a bundle file.
func WatchBundleFile(ctx context.Context, path string, store *Store, log *slog.Logger) {
	WatchFile(ctx, path, func(b []byte) error {
		rt, err := store.Update(b)
		if err != nil {
			log.Error("Rejected bundle; the last good one stays in force", "file", path, "error", err)
			return err
		}
		log.Info("Loaded bundle", "file", path, "fingerprint", rt.Fingerprint, "keys", rt.KeyCount())
		return nil
	}, func(err error) { store.SetSourceHealth(err) })
}
