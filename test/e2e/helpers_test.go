package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
	"github.com/keygate-dev/keygate/test/logaddr"
)

// credentials are what the operator hands an API consumer.
type credentials struct {
	key, secret, authorization string
}

// createKey applies an ApiKey of the test policy and returns its credentials
// once it is Ready and its credentials Secret exists.
func createKey(t *testing.T, name string, spec keygatev1.ApiKeySpec) credentials {
	t.Helper()
	if spec.PolicyRef.Name == "" {
		spec.PolicyRef.Name = policy
	}
	key := &keygatev1.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}, Spec: spec}
	NewWithT(t).Expect(suite.k8s.Create(t.Context(), key)).To(Succeed())
	t.Cleanup(func() { _ = suite.k8s.Delete(context.Background(), key) })
	waitReady(t, name, metav1.ConditionTrue, keygatev1.ReasonReady)
	return readCredentials(t, name)
}

// getKey reads an ApiKey.
func getKey(t *testing.T, name string) *keygatev1.ApiKey {
	t.Helper()
	key := &keygatev1.ApiKey{}
	NewWithT(t).Expect(suite.k8s.Get(t.Context(), client.ObjectKey{Namespace: namespace, Name: name}, key)).To(Succeed())
	return key
}

// waitReady waits for the ApiKey's Ready condition to have status and reason.
func waitReady(t *testing.T, name string, status metav1.ConditionStatus, reason string) {
	t.Helper()
	NewWithT(t).Eventually(func(g Gomega) {
		key := &keygatev1.ApiKey{}
		g.Expect(suite.k8s.Get(t.Context(), client.ObjectKey{Namespace: namespace, Name: name}, key)).To(Succeed())
		c := meta.FindStatusCondition(key.Status.Conditions, keygatev1.ConditionReady)
		g.Expect(c).NotTo(BeNil(), "Ready condition")
		g.Expect(c.ObservedGeneration).To(Equal(key.Generation), "Ready condition is current")
		g.Expect(c.Status).To(Equal(status), "Ready: %s", c.Message)
		g.Expect(c.Reason).To(Equal(reason))
	}, operatorTimeout, interval).Should(Succeed(), "ApiKey %s Ready=%s/%s", name, status, reason)
}

// readCredentials waits for and reads the ApiKey's credentials Secret.
func readCredentials(t *testing.T, name string) credentials {
	t.Helper()
	var creds credentials
	NewWithT(t).Eventually(func(g Gomega) {
		s := &corev1.Secret{}
		g.Expect(suite.k8s.Get(t.Context(), client.ObjectKey{Namespace: namespace, Name: name + "-credentials"}, s)).To(Succeed())
		creds = credentials{key: string(s.Data["key"]), secret: string(s.Data["secret"]), authorization: string(s.Data["authorization"])}
		g.Expect(creds.key).To(HavePrefix("apk-"))
		g.Expect(len(creds.secret)).To(BeNumerically(">=", 43))
	}, operatorTimeout, interval).Should(Succeed(), "credentials Secret of %s", name)
	return creds
}

// rotate asks for a rotation and waits for the credentials Secret to hold a
// new secret; it returns the new credentials.
func rotate(t *testing.T, name, value string, old credentials) credentials {
	t.Helper()
	g := NewWithT(t)
	key := getKey(t, name)
	patch := client.MergeFrom(key.DeepCopy())
	if key.Annotations == nil {
		key.Annotations = map[string]string{}
	}
	key.Annotations[keygatev1.AnnotationRotate] = value
	g.Expect(suite.k8s.Patch(t.Context(), key, patch)).To(Succeed())
	var creds credentials
	g.Eventually(func() string {
		creds = readCredentials(t, name)
		return creds.secret
	}, operatorTimeout, interval).ShouldNot(Equal(old.secret), "a new secret for %s", name)
	g.Expect(creds.key).To(Equal(old.key), "rotation keeps the key ID")
	return creds
}

func base64URL(s string) ([]byte, error) { return base64.RawURLEncoding.DecodeString(s) }

func basic(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

// sidecar is one sidecar process in Kubernetes mode.
type sidecar struct {
	t           *testing.T
	name        string
	base, admin string
	proc        *process
	log         string
}

// startSidecar runs the sidecar binary for the test policy as the
// least-privilege sidecar user and waits for /readyz.
func startSidecar(t *testing.T, name string) *sidecar {
	t.Helper()
	return startSidecarFor(t, name, policy)
}

// startSidecarFor is startSidecar for another policy (see createPolicy).
func startSidecarFor(t *testing.T, name, policy string) *sidecar {
	t.Helper()
	s := &sidecar{t: t, name: name, log: filepath.Join(t.TempDir(), name+".log")}
	proc, err := startProcess(suite.sidecarBin, s.log,
		"--policy", policy, "--namespace", namespace, "--kubeconfig", suite.sidecarKubeconfig,
		"--upstream-port", fmt.Sprint(suite.upstreamPort), "--port", "0",
		"--admin-port", "0", "--bind-address", "127.0.0.1",
		"--drain-timeout", "1s", "--log-level", "debug")
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	s.proc = proc
	t.Cleanup(func() {
		proc.stop()
		if t.Failed() {
			dumpLog(s.log)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	main, admin, err := logaddr.Sidecar(ctx, s.log, proc.exited)
	if err != nil {
		dumpLog(s.log)
		t.Fatalf("%s: %v", name, err)
	}
	s.base, s.admin = "http://"+main, "http://"+admin
	NewWithT(t).Eventually(func() int {
		if proc.exited() {
			dumpLog(s.log)
			t.Fatalf("%s exited before it was ready", name)
		}
		return statusOf(s.admin + "/readyz")
	}, startTimeout, interval).Should(Equal(http.StatusOK), "%s /readyz", name)
	return s
}

// waitWorks waits until the sidecar accepts the credentials: the ApiKey's
// Ready condition and the bundle are written by two reconcilers, and the
// bundle then travels through a watch.
func (s *sidecar) waitWorks(creds credentials) {
	s.t.Helper()
	NewWithT(s.t).Eventually(func() int { return s.status("/charges", creds.authorization) }, propagationTimeout, interval).
		Should(Equal(http.StatusOK), "%s accepts the credentials of %s", s.name, creds.key)
}

// response is a sidecar's answer.
type response struct {
	status int
	header http.Header
	body   map[string]any
	raw    string
}

// do sends a request through the sidecar; headers are name, value pairs.
func (s *sidecar) do(method, path, body string, headers ...string) response {
	s.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(s.t.Context(), method, s.base+path, rd)
	if err != nil {
		s.t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatalf("%s %s %s: %v", s.name, method, path, err)
	}
	defer func() { _ = resp.Body.Close() }()
	raw, _ := io.ReadAll(resp.Body)
	r := response{status: resp.StatusCode, header: resp.Header, raw: string(raw)}
	_ = json.Unmarshal(raw, &r.body)
	return r
}

// get sends GET path with an Authorization header.
func (s *sidecar) get(path, authorization string) response {
	s.t.Helper()
	return s.do(http.MethodGet, path, "", "Authorization", authorization)
}

// status is the status of GET path with an Authorization header.
func (s *sidecar) status(path, authorization string) int {
	s.t.Helper()
	return s.get(path, authorization).status
}

// token gets an access token with the api_key grant.
func (s *sidecar) token(creds credentials) string {
	s.t.Helper()
	body, _ := json.Marshal(map[string]string{"apiKey": creds.key, "secret": creds.secret})
	r := s.do(http.MethodPost, "/api/token", string(body), "Content-Type", "application/json")
	g := NewWithT(s.t)
	g.Expect(r.status).To(Equal(http.StatusCreated), "token endpoint: %s", r.raw)
	g.Expect(r.body).To(HaveKeyWithValue("token_type", "Bearer"))
	tok, _ := r.body["access_token"].(string)
	g.Expect(tok).NotTo(BeEmpty(), "access_token")
	return tok
}
