package podinject

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// Handler is the admission handler: it decodes the pod, calls inject, checks
// that the named TokenPolicy exists, and answers with the patch.
type Handler struct {
	// Config is inject's configuration.
	Config Config
	// Policies reads TokenPolicies; a live reader (the manager's API reader)
	// so that a policy created just before its pods is found.
	Policies client.Reader
	// Decoder decodes admission requests.
	Decoder admission.Decoder
	// Namespaces are the namespaces the manager watches (--watch-namespaces);
	// empty means all. A labelled pod elsewhere is refused: the manager would
	// never grant its sidecar access to its bundle, so it could never be Ready.
	Namespaces []string

	observe func(req admission.Request, result string)
}

var _ admission.Handler = (*Handler)(nil)

// Handle implements admission.Handler and records the result and latency.
func (h *Handler) Handle(ctx context.Context, req admission.Request) admission.Response {
	start := time.Now()
	resp, res := h.handle(ctx, req)
	observeAdmission(res, time.Since(start))
	if h.observe != nil {
		h.observe(req, res)
	}
	return resp
}

func (h *Handler) handle(ctx context.Context, req admission.Request) (admission.Response, string) {
	log := ctrl.LoggerFrom(ctx).WithValues("namespace", req.Namespace, "name", req.Name)
	if req.Operation != admissionv1.Create || req.Kind.Group != "" || req.Kind.Kind != "Pod" || req.SubResource != "" {
		return admission.Allowed("keygate injects pods on creation only"), resultSkipped
	}
	if len(h.Namespaces) > 0 && !slices.Contains(h.Namespaces, req.Namespace) {
		return admission.Denied(fmt.Sprintf("namespace %q is not watched by keygate (watchNamespaces / --watch-namespaces: %s): "+
			"the sidecar could never read its bundle there; add the namespace to watchNamespaces or remove the %s label",
			req.Namespace, strings.Join(h.Namespaces, ","), keygatev1.LabelInject)), resultRefused
	}
	pod := &corev1.Pod{}
	if err := h.Decoder.Decode(req, pod); err != nil {
		return admission.Errored(http.StatusBadRequest, fmt.Errorf("decode pod: %w", err)), resultError
	}
	changed, err := inject(pod, h.Config)
	if errors.Is(err, ErrInvalidPod) {
		log.V(1).Info("Refused pod", "reason", err.Error())
		return admission.Denied(err.Error()), resultRefused
	}
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, err), resultError
	}

	policy := pod.Annotations[keygatev1.AnnotationPolicy]
	if err := h.Policies.Get(ctx, types.NamespacedName{Namespace: req.Namespace, Name: policy}, &keygatev1.TokenPolicy{}); err != nil {
		if apierrors.IsNotFound(err) {
			return admission.Denied(fmt.Sprintf("TokenPolicy %q named by annotation %s does not exist in namespace %q",
				policy, keygatev1.AnnotationPolicy, req.Namespace)), resultRefused
		}
		log.Error(err, "Failed to read TokenPolicy", "tokenPolicy", policy)
		return admission.Errored(http.StatusInternalServerError, fmt.Errorf("read TokenPolicy %q: %w", policy, err)), resultError
	}

	if !changed {
		return admission.Allowed("keygate sidecar already injected"), resultUnchanged
	}
	raw, err := json.Marshal(pod)
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, fmt.Errorf("encode pod: %w", err)), resultError
	}
	log.V(1).Info("Injected keygate sidecar", "tokenPolicy", policy)
	return admission.PatchResponseFromRaw(req.Object.Raw, raw), resultInjected
}
