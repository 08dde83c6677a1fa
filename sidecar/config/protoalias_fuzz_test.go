package config

import (
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kruntime "k8s.io/apimachinery/pkg/runtime"
)

// FuzzAliasSecret: whatever bytes arrive, a Secret decoded in place is the
// one client-go's decoder makes of them; what client-go refuses is never
// decoded in place. `go test` runs the seeds; `go test -fuzz=FuzzAliasSecret`
// searches further.
func FuzzAliasSecret(f *testing.F) {
	info, _ := kruntime.SerializerInfoForMediaType(codecs.SupportedMediaTypes(), kruntime.ContentTypeProtobuf)
	immutable := false
	for _, obj := range []kruntime.Object{
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "keygate--p-64-3", Namespace: "ns", ResourceVersion: "7",
			Labels: map[string]string{"keygate.dev/bundle-shard": "3"}},
			Data: map[string][]byte{"bundle.json": []byte(`{"keys":[]}`), "": nil}, StringData: map[string]string{"s": "v"},
			Type: corev1.SecretTypeOpaque, Immutable: &immutable},
		&corev1.Secret{},
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "cm"}, Data: map[string]string{"a": "b"}},
	} {
		raw, err := kruntime.Encode(codecs.EncoderForVersion(info.Serializer, corev1.SchemeGroupVersion), obj)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(raw)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ours, ok := aliasSecret(data)
		if !ok {
			return
		}
		theirs, _, err := codecs.UniversalDeserializer().Decode(data, nil, nil)
		if err != nil {
			t.Fatalf("decoded in place what client-go refuses (%v): %#v", err, ours)
		}
		if !reflect.DeepEqual(ours, theirs) {
			t.Fatalf("decoded in place %#v, client-go %#v", ours, theirs)
		}
	})
}
