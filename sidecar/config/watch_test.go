package config

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"runtime"
	"slices"
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

// Secrets decoded in place (aliasSecret) are what client-go's decoders make
// of the same events, whatever the Secret holds; other objects and other
// events go through client-go's decoders.
func TestSecretEventsDecodeInPlace(t *testing.T) {
	immutable := true
	full := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "keygate--p-64-3", Namespace: "ns", ResourceVersion: "42", UID: "u-1", Generation: 3,
			Labels: map[string]string{"keygate.dev/bundle-shard": "3"}, Annotations: map[string]string{"keygate.dev/size-cutoff": "12"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "keygate.dev/v1alpha1", Kind: "TokenPolicy", Name: "p", UID: "u-0"}},
			Finalizers:      []string{"f"}, CreationTimestamp: metav1.Unix(1700000000, 0),
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "keygate", Operation: metav1.ManagedFieldsOperationUpdate, FieldsType: "FieldsV1",
				FieldsV1: metav1.NewFieldsV1(`{"f:data":{}}`)}}},
		Data:      map[string][]byte{"bundle.json": bytes.Repeat([]byte{'k'}, 300<<10), "empty": {}, "other": []byte("x")},
		Type:      corev1.SecretTypeOpaque,
		Immutable: &immutable,
	}
	bare := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "bare", ResourceVersion: "1"}}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "cm", ResourceVersion: "2"}, Data: map[string]string{"a": "b"}}
	status := &metav1.Status{Status: metav1.StatusFailure, Code: 410, Reason: metav1.StatusReasonExpired, Message: "too old"}
	info, _ := kruntime.SerializerInfoForMediaType(codecs.SupportedMediaTypes(), kruntime.ContentTypeProtobuf)
	var stream bytes.Buffer
	events := streaming.NewEncoder(info.StreamSerializer.NewFrameWriter(&stream), info.StreamSerializer.Serializer)
	for _, ev := range []struct {
		typ watch.EventType
		obj kruntime.Object
	}{{watch.Added, full}, {watch.Modified, bare}, {watch.Deleted, full}, {watch.Modified, cm}, {watch.Error, status}} {
		raw, err := kruntime.Encode(codecs.EncoderForVersion(info.Serializer, corev1.SchemeGroupVersion), ev.obj)
		if err != nil {
			t.Fatal(err)
		}
		if err := events.Encode(&metav1.WatchEvent{Type: string(ev.typ), Object: kruntime.RawExtension{Raw: raw}}); err != nil {
			t.Fatal(err)
		}
	}
	ours := eventDecoder(&frameDecoder{body: io.NopCloser(bytes.NewReader(stream.Bytes()))})
	theirs := restwatch.NewDecoder(streaming.NewDecoder(info.StreamSerializer.NewFrameReader(io.NopCloser(bytes.NewReader(stream.Bytes()))), protobufEvents),
		codecs.UniversalDeserializer())
	for i := range 5 {
		typ, obj, err := ours.Decode()
		wantTyp, want, wantErr := theirs.Decode()
		if err != nil || wantErr != nil || typ != wantTyp || !reflect.DeepEqual(obj, want) {
			t.Fatalf("event %d: decoded in place %s %#v (%v), client-go %s %#v (%v)", i, typ, obj, err, wantTyp, want, wantErr)
		}
	}
	// Not a Secret in place: anything that is not a protobuf v1 Secret.
	for _, data := range [][]byte{nil, []byte(`{"kind":"Secret","apiVersion":"v1"}`), append(slices.Clone(protobufMagic), 0xff)} {
		if _, ok := aliasSecret(data); ok {
			t.Fatalf("aliasSecret(%q) took it", data)
		}
	}
}

// Reading a shard's event allocates about its size once (the frame), not
// once per envelope: 4 copies of the shard document before decoding in place.
func TestSecretEventDecodesWithOneCopy(t *testing.T) {
	const size = 300 << 10
	stream := watchStream(t, kruntime.ContentTypeProtobuf, secretOf("a", size))
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	const rounds = 10
	for range rounds {
		dec := eventDecoder(&frameDecoder{body: io.NopCloser(bytes.NewReader(stream))})
		if _, obj, err := dec.Decode(); err != nil || len(obj.(*corev1.Secret).Data["bundle.json"]) != size {
			t.Fatalf("decode: %v", err)
		}
	}
	runtime.ReadMemStats(&after)
	perEvent := (after.TotalAlloc - before.TotalAlloc) / rounds
	if perEvent > size*3/2 {
		t.Fatalf("an event of a %d KiB Secret allocated %d KiB", size>>10, perEvent>>10)
	}
	t.Logf("an event of a %d KiB Secret allocated %d KiB", size>>10, perEvent>>10)
}
