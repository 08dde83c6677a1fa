package config

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer/streaming"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	restwatch "k8s.io/client-go/rest/watch"
)

// maxFrame is the largest watch event accepted, as client-go's own
// streaming decoder (an object in etcd is at most 1.5 MiB by default).
const maxFrame = 16 << 20

// watchNamed opens a watch (opts as a ListWatch gives them) of a core/v1
// resource in ns and decodes its events with a frameDecoder. With an
// applier, each added or modified object is applied as it is decoded.
func watchNamed(ctx context.Context, client rest.Interface, resource, ns string, opts metav1.ListOptions, in *applier) (watch.Interface, error) {
	opts.Watch = true
	body, err := client.Get().Namespace(ns).Resource(resource).VersionedParams(&opts, metav1.ParameterCodec).Stream(ctx)
	if err != nil {
		return nil, err
	}
	frames := &frameDecoder{body: body, done: make(chan struct{})}
	dec := eventDecoder(frames)
	if in != nil {
		frames.slots = in.slots
		dec = &applyingDecoder{Decoder: dec, frames: frames, apply: in.apply}
	}
	return watch.NewStreamWatcher(dec,
		// as client-go's own watch reports a stream's decoding error
		apierrors.NewClientErrorReporter(http.StatusInternalServerError, http.MethodGet, "ClientWatchDecoding")), nil
}

// eventDecoder decodes the events of a watch stream read by frames; a
// protobuf Secret is decoded in place (aliasSecret).
func eventDecoder(frames *frameDecoder) watch.Decoder {
	return restwatch.NewDecoder(frames, aliasingDecoder{codecs.UniversalDeserializer()})
}

// applier applies a watch's events where they are read, a few at a time
// over all the watches that share its slots, instead of handing them on to
// a reflector's queue: a shard's event is read, decoded, compiled and
// dropped before the next one is read. When the 64 shards of a 100,000-key
// policy were rewritten at once, their watches each held a read and decoded
// Secret of some 280 KiB waiting to be applied (applies are one at a time),
// which made a third of the sidecar's heap (docs/sidecar.md, "Memory").
type applier struct {
	// slots bounds the events read and applied at once: a protobuf frame
	// is read only once its watch holds a slot.
	slots chan struct{}
	// apply takes each added or modified object as decoded; what it leaves
	// of the object goes on to the reflector.
	apply func(runtime.Object)
}

// applyingDecoder applies each added or modified object it decodes (applier)
// and then gives back its frame's slot.
type applyingDecoder struct {
	watch.Decoder
	frames *frameDecoder
	apply  func(runtime.Object)
}

func (d *applyingDecoder) Decode() (watch.EventType, runtime.Object, error) {
	defer d.frames.release()
	typ, obj, err := d.Decoder.Decode()
	if err == nil && (typ == watch.Added || typ == watch.Modified) {
		d.apply(obj)
	}
	return typ, obj, err
}

// frameDecoder reads the events of a protobuf watch stream (length-prefixed
// frames), each into a buffer of its own size that is garbage once the event
// is decoded. client-go's streaming decoder keeps one buffer per watch for
// the watch's life, doubled until the largest event fits: 512 KiB for a
// 280 KiB shard, 32 MiB for the 64 shard watches of a 100,000-key policy
// while they sat idle. A JSON stream (an API server that does not answer
// protobuf) is read with client-go's JSON decoder.
type frameDecoder struct {
	body io.ReadCloser
	hdr  [4]byte
	json streaming.Decoder // set once the stream turned out to be JSON
	// slots, when set, is taken before a frame is read (held until
	// release); done is closed by Close.
	slots     chan struct{}
	held      bool
	done      chan struct{}
	closeOnce sync.Once
}

// release gives back the slot of the last frame read, if any.
func (d *frameDecoder) release() {
	if d.held {
		d.held = false
		<-d.slots
	}
}

func (d *frameDecoder) Decode(defaults *schema.GroupVersionKind, into runtime.Object) (runtime.Object, *schema.GroupVersionKind, error) {
	if d.json != nil {
		return d.json.Decode(defaults, into)
	}
	if _, err := io.ReadFull(d.body, d.hdr[:]); err != nil {
		return nil, nil, err
	}
	if d.hdr[0] == '{' {
		info, _ := runtime.SerializerInfoForMediaType(codecs.SupportedMediaTypes(), runtime.ContentTypeJSON)
		r := io.MultiReader(bytes.NewReader(d.hdr[:]), d.body)
		d.json = streaming.NewDecoder(info.StreamSerializer.NewFrameReader(readCloser{r, d.body}), info.StreamSerializer.Serializer)
		return d.json.Decode(defaults, into)
	}
	n := binary.BigEndian.Uint32(d.hdr[:])
	if n > maxFrame {
		return nil, nil, fmt.Errorf("watch event of %d bytes: %w", n, streaming.ErrObjectTooLarge)
	}
	if d.slots != nil {
		select {
		case d.slots <- struct{}{}:
			d.held = true
		case <-d.done:
			return nil, nil, io.ErrClosedPipe
		}
	}
	frame := make([]byte, n)
	if _, err := io.ReadFull(d.body, frame); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, nil, err
	}
	if ev, ok := into.(*metav1.WatchEvent); ok && aliasWatchEvent(frame, ev) {
		return ev, nil, nil
	}
	return protobufEvents.Decode(frame, defaults, into)
}

func (d *frameDecoder) Close() error {
	d.closeOnce.Do(func() {
		if d.done != nil {
			close(d.done)
		}
	})
	return d.body.Close()
}

type readCloser struct {
	io.Reader
	io.Closer
}
