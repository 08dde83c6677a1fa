package podinject

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// A labelled pod outside the watched namespaces is refused with a message
// naming watchNamespaces (issue 17): its sidecar would never be granted its
// bundle. Inside them it goes on to the policy lookup.
func TestHandlerRefusesUnwatchedNamespace(t *testing.T) {
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := keygatev1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	h := &Handler{Config: testConfig(), Decoder: admission.NewDecoder(scheme), Namespaces: []string{"shop", "keygate-system"}}
	request := func(ns string) admission.Request {
		pod := newPod()
		pod.Namespace = ns
		raw, err := json.Marshal(pod)
		if err != nil {
			t.Fatal(err)
		}
		return admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
			Operation: admissionv1.Create, Namespace: ns, Name: pod.Name,
			Kind:   metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Object: runtime.RawExtension{Raw: raw},
		}}
	}

	resp, result := h.handle(context.Background(), request("elsewhere"))
	if resp.Allowed || result != resultRefused {
		t.Fatalf("pod in an unwatched namespace: allowed=%v result=%s", resp.Allowed, result)
	}
	msg := resp.Result.Message
	for _, want := range []string{`namespace "elsewhere" is not watched`, "watchNamespaces", "--watch-namespaces: shop,keygate-system"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q lacks %q", msg, want)
		}
	}

	h.Policies = fake.NewClientBuilder().WithScheme(scheme).Build() // no TokenPolicy at all
	resp, result = h.handle(context.Background(), request("shop"))
	if resp.Allowed || !strings.Contains(resp.Result.Message, `TokenPolicy "payments-api"`) {
		t.Errorf("pod in a watched namespace: got to the policy lookup? allowed=%v result=%s message=%q", resp.Allowed, result, resp.Result.Message)
	}
}

// Every admission answer closes its connection, so that the API server never
// reuses one to a manager pod that is shutting down.
func TestAnswerClosesConnection(t *testing.T) {
	srv := httptest.NewServer(closeAfterAnswer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("{}"))
	})))
	defer srv.Close()
	for i := 0; i < 2; i++ {
		resp, err := srv.Client().Post(srv.URL, "application/json", strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if !resp.Close {
			t.Errorf("answer %d keeps the connection open (header %v)", i, resp.Header)
		}
	}
}
