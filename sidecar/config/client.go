package config

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/rest"
)

// codecs decode core/v1 objects (no conversion: the sidecar speaks v1 only).
var codecs = func() serializer.CodecFactory {
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		panic(err) // a static registration
	}
	return serializer.NewCodecFactory(scheme)
}()

// protobufEvents decodes the events of a protobuf watch stream.
var protobufEvents = func() runtime.Decoder {
	info, ok := runtime.SerializerInfoForMediaType(codecs.SupportedMediaTypes(), runtime.ContentTypeProtobuf)
	if !ok || info.StreamSerializer == nil {
		panic("no protobuf stream serializer")
	}
	return info.StreamSerializer.Serializer
}()

// NewCoreClient returns a REST client for the core/v1 group only. The
// sidecar reads one Secret and one ConfigMap; the full clientset registers
// every API group at start-up and costs several MiB of resident memory.
func NewCoreClient(cfg *rest.Config) (rest.Interface, error) {
	c := rest.CopyConfig(cfg)
	c.GroupVersion = &corev1.SchemeGroupVersion
	c.APIPath = "/api"
	c.NegotiatedSerializer = codecs.WithoutConversion()
	// Protobuf, as Kubernetes' own components speak: a Secret's data travels
	// as raw bytes instead of base64 in JSON, and a watch reads length-
	// prefixed frames instead of keeping a JSON decoder's buffer beside its
	// own. With one watch per bundle shard, those per-watch buffers grew
	// with the bundle: at 100,000 keys (64 shards of 280 KiB) they were
	// half of the sidecar's heap. (The watches also read their frames
	// themselves: watch.go.)
	c.ContentType = runtime.ContentTypeProtobuf
	c.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	return rest.RESTClientFor(c)
}
