// Command image builds a from-scratch container image holding one static
// binary (and the host's CA certificates) and writes it as a tarball.
//
//	go run . -binary ../../bin/sidecar -tag keygate/sidecar:v0.1.0 -out ../../bin/images/sidecar.tar
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// nonRoot is the user the image runs as (the distroless "nonroot" user).
const nonRoot = "65532:65532"

func main() {
	binary := flag.String("binary", "", "static binary to put at /<name> and run as the entrypoint")
	tag := flag.String("tag", "", "image reference with a pinned tag, e.g. keygate/sidecar:v0.1.0 (never latest)")
	out := flag.String("out", "", "tarball to write")
	caCerts := flag.String("ca-certificates", "/etc/ssl/certs/ca-certificates.crt", "CA bundle to include; empty to leave out")
	flag.Parse()
	if err := build(*binary, *tag, *out, *caCerts); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func build(binary, tag, out, caCerts string) error {
	if binary == "" || tag == "" || out == "" {
		return fmt.Errorf("-binary, -tag and -out are required")
	}
	ref, err := name.NewTag(tag)
	if err != nil {
		return fmt.Errorf("parse tag %q: %w", tag, err)
	}
	if ref.TagStr() == "latest" {
		return fmt.Errorf("tag %q: pin a version, never latest", tag)
	}
	files := map[string]fileEntry{}
	bin, err := os.ReadFile(binary) // #nosec G304 -- path given by the build
	if err != nil {
		return fmt.Errorf("read binary: %w", err)
	}
	entry := "/" + path.Base(binary)
	files[entry] = fileEntry{data: bin, mode: 0o755}
	if caCerts != "" {
		ca, err := os.ReadFile(caCerts) // #nosec G304 -- path given by the build
		if err != nil {
			return fmt.Errorf("read CA certificates: %w", err)
		}
		files["/etc/ssl/certs/ca-certificates.crt"] = fileEntry{data: ca, mode: 0o644}
	}
	layerTar, err := tarFiles(files)
	if err != nil {
		return err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return fmt.Errorf("make layer: %w", err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return fmt.Errorf("append layer: %w", err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	cfg.Config = v1.Config{Entrypoint: []string{entry}, User: nonRoot, Env: []string{"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"}}
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		return fmt.Errorf("set config: %w", err)
	}
	if err := os.MkdirAll(path.Dir(out), 0o750); err != nil {
		return fmt.Errorf("create output folder: %w", err)
	}
	if err := tarball.WriteToFile(out, ref, img); err != nil {
		return fmt.Errorf("write %s: %w", out, err)
	}
	digest, err := img.Digest()
	if err != nil {
		return fmt.Errorf("digest: %w", err)
	}
	fmt.Printf("%s %s -> %s\n", ref.Name(), digest, out)
	return nil
}

type fileEntry struct {
	data []byte
	mode int64
}

// tarFiles writes a reproducible layer: fixed times, root ownership, parent
// folders first.
func tarFiles(files map[string]fileEntry) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	dirs := map[string]bool{}
	for _, p := range sortedKeys(files) {
		var parents []string
		for d := path.Dir(p); d != "/" && !dirs[d]; d = path.Dir(d) {
			parents = append([]string{d}, parents...)
			dirs[d] = true
		}
		for _, d := range parents {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(d, "/") + "/", Mode: 0o755, ModTime: epoch}); err != nil {
				return nil, fmt.Errorf("write folder %s: %w", d, err)
			}
		}
		f := files[p]
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(p, "/"), Mode: f.mode, Size: int64(len(f.data)), ModTime: epoch}); err != nil {
			return nil, fmt.Errorf("write %s: %w", p, err)
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, fmt.Errorf("write %s: %w", p, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("close layer: %w", err)
	}
	return buf.Bytes(), nil
}

func sortedKeys(m map[string]fileEntry) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
