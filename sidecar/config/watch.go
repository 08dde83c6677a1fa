package config

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"

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
// resource in ns and decodes its events with a frameDecoder.
func watchNamed(ctx context.Context, client rest.Interface, resource, ns string, opts metav1.ListOptions) (watch.Interface, error) {
	opts.Watch = true
	body, err := client.Get().Namespace(ns).Resource(resource).VersionedParams(&opts, metav1.ParameterCodec).Stream(ctx)
	if err != nil {
		return nil, err
	}
	return watch.NewStreamWatcher(restwatch.NewDecoder(&frameDecoder{body: body}, codecs.UniversalDeserializer()),
		// as client-go's own watch reports a stream's decoding error
		apierrors.NewClientErrorReporter(http.StatusInternalServerError, http.MethodGet, "ClientWatchDecoding")), nil
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
	frame := make([]byte, n)
	if _, err := io.ReadFull(d.body, frame); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, nil, err
	}
	return protobufEvents.Decode(frame, defaults, into)
}

func (d *frameDecoder) Close() error { return d.body.Close() }

type readCloser struct {
	io.Reader
	io.Closer
}
