package config

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/streaming"
	"k8s.io/apimachinery/pkg/watch"
	restwatch "k8s.io/client-go/rest/watch"

	"github.com/keygate-dev/keygate/sidecar/bundletest"
)

// watchStream encodes events of secrets as the API server sends a watch in
// mediaType.
func watchStream(t testing.TB, mediaType string, secrets ...*corev1.Secret) []byte {
	t.Helper()
	info, ok := kruntime.SerializerInfoForMediaType(codecs.SupportedMediaTypes(), mediaType)
	if !ok {
		t.Fatal(mediaType)
	}
	enc := codecs.EncoderForVersion(info.Serializer, corev1.SchemeGroupVersion)
	var out bytes.Buffer
	events := streaming.NewEncoder(info.StreamSerializer.NewFrameWriter(&out), info.StreamSerializer.Serializer)
	for _, s := range secrets {
		raw, err := kruntime.Encode(enc, s)
		if err != nil {
			t.Fatal(err)
		}
		if err := events.Encode(&metav1.WatchEvent{Type: string(watch.Modified), Object: kruntime.RawExtension{Raw: raw}}); err != nil {
			t.Fatal(err)
		}
	}
	return out.Bytes()
}

func secretOf(name string, size int) *corev1.Secret {
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, ResourceVersion: "7"},
		Data: map[string][]byte{"bundle.json": bytes.Repeat([]byte{'k'}, size)}}
}

// A watch's events are read frame by frame, protobuf or JSON, in order, and
// a stream cut inside a frame is an unexpected end, not an event.
func TestFrameDecoder(t *testing.T) {
	for _, mt := range []string{kruntime.ContentTypeProtobuf, kruntime.ContentTypeJSON} {
		stream := watchStream(t, mt, secretOf("a", 10), secretOf("b", 300<<10))
		dec := restwatch.NewDecoder(&frameDecoder{body: io.NopCloser(bytes.NewReader(stream))}, codecs.UniversalDeserializer())
		for _, want := range []string{"a", "b"} {
			typ, obj, err := dec.Decode()
			s, ok := obj.(*corev1.Secret)
			if err != nil || typ != watch.Modified || !ok || s.Name != want || s.ResourceVersion != "7" {
				t.Fatalf("%s: event %s: %v %T %v", mt, want, typ, obj, err)
			}
		}
		if _, _, err := dec.Decode(); !errors.Is(err, io.EOF) {
			t.Fatalf("%s: after the last event: %v, want EOF", mt, err)
		}
	}
	stream := watchStream(t, kruntime.ContentTypeProtobuf, secretOf("a", 1000))
	dec := restwatch.NewDecoder(&frameDecoder{body: io.NopCloser(bytes.NewReader(stream[:len(stream)-10]))}, codecs.UniversalDeserializer())
	if _, _, err := dec.Decode(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("a cut frame: %v", err)
	}
	huge := []byte{0x7f, 0, 0, 0}
	dec = restwatch.NewDecoder(&frameDecoder{body: io.NopCloser(bytes.NewReader(huge))}, codecs.UniversalDeserializer())
	if _, _, err := dec.Decode(); err == nil || !strings.Contains(err.Error(), "maximum allowed size") {
		t.Fatalf("a 2 GiB frame: %v", err)
	}
}

// An idle watch keeps no buffer of the size of the last event: a sidecar of
// a 100,000-key policy has 64 shard watches of some 280 KiB events each.
// (client-go's streaming decoder kept 512 KiB per watch, 32 MiB in all.)
func TestFrameDecoderKeepsNoBuffer(t *testing.T) {
	stream := watchStream(t, kruntime.ContentTypeProtobuf, secretOf("a", 1<<20))
	const watches = 32
	decs := make([]*restwatch.Decoder, watches)
	base := bundletest.LiveHeap()
	for i := range decs {
		decs[i] = restwatch.NewDecoder(&frameDecoder{body: io.NopCloser(bytes.NewReader(stream))}, codecs.UniversalDeserializer())
		if _, _, err := decs[i].Decode(); err != nil {
			t.Fatal(err)
		}
	}
	grown := int64(bundletest.LiveHeap()) - int64(base)
	runtime.KeepAlive(decs)
	if grown > 4<<20 {
		t.Fatalf("%d idle watches that each read a 1 MiB event keep %d KiB", watches, grown>>10)
	}
	t.Logf("%d idle watches that each read a 1 MiB event keep %d KiB", watches, grown>>10)
}
