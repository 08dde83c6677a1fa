package controllers

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/keygate-dev/keygate/api/bundle"
	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

var t0 = time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)

func keyAt(name string, created time.Time, opts ...func(*keygatev1.ApiKey)) keygatev1.ApiKey {
	k := newApiKey("ns", name, "p", opts...)
	k.CreationTimestamp = metav1.Time{Time: created}
	return *k
}

func TestAdmit(t *testing.T) {
	disabled := func(k *keygatev1.ApiKey) { k.Spec.Disabled = true }
	policy := newPolicy("ns", "p", withMaxApiKeys(2))
	tests := []struct {
		name   string
		keys   []keygatev1.ApiKey
		policy *keygatev1.TokenPolicy
		want   map[string]string
	}{
		{"oldest accepted, newest refused",
			[]keygatev1.ApiKey{keyAt("c", t0.Add(2*time.Second)), keyAt("a", t0), keyAt("b", t0.Add(time.Second))}, policy,
			map[string]string{"a": "Ready", "b": "Ready", "c": "LimitExceeded"}},
		{"same creation second: by name",
			[]keygatev1.ApiKey{keyAt("z", t0), keyAt("y", t0), keyAt("x", t0)}, policy,
			map[string]string{"x": "Ready", "y": "Ready", "z": "LimitExceeded"}},
		{"disabled and expired keys take no place",
			[]keygatev1.ApiKey{keyAt("a", t0, disabled), keyAt("b", t0, withExpiry(t0)), keyAt("c", t0), keyAt("d", t0), keyAt("e", t0)}, policy,
			map[string]string{"a": "Disabled", "b": "Expired", "c": "Ready", "d": "Ready", "e": "LimitExceeded"}},
		{"no policy", []keygatev1.ApiKey{keyAt("a", t0), keyAt("b", t0, disabled)}, nil,
			map[string]string{"a": "PolicyNotFound", "b": "Disabled"}},
		{"not yet expired", []keygatev1.ApiKey{keyAt("a", t0, withExpiry(t0.Add(time.Second)))}, policy,
			map[string]string{"a": "Ready"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := admit(tt.keys, tt.policy, t0)
			if len(got) != len(tt.want) {
				t.Fatalf("got %d verdicts, want %d", len(got), len(tt.want))
			}
			for name, reason := range tt.want {
				v := got[name]
				if v.Reason != reason || v.Ready != (reason == "Ready") || v.Message == "" {
					t.Errorf("%s: got %+v, want reason %s", name, v, reason)
				}
			}
		})
	}
}

func TestDecideRotation(t *testing.T) {
	intact := &credentials{KeyID: "apk-x", Secret: "s", Version: 3, RotatedAt: t0, Intact: true}
	withAnnotation := func(v string) func(*keygatev1.ApiKey) {
		return func(k *keygatev1.ApiKey) { k.Annotations = map[string]string{keygatev1.AnnotationRotate: v} }
	}
	issued := func(k *keygatev1.ApiKey) { k.Status.KeyID, k.Status.SecretVersion = "apk-x", 3 }
	tests := []struct {
		name string
		key  *keygatev1.ApiKey
		cur  *credentials
		now  time.Time
		want rotationTrigger
	}{
		{"new key", newApiKey("ns", "k", "p"), nil, t0, triggerInitial},
		{"new key with a rotate annotation is not rotated twice", newApiKey("ns", "k", "p", withAnnotation("1")), nil, t0, triggerInitial},
		{"Secret deleted", newApiKey("ns", "k", "p", issued), nil, t0, triggerReplaced},
		{"Secret edited", newApiKey("ns", "k", "p", issued), &credentials{Version: 3}, t0, triggerReplaced},
		{"nothing to do", newApiKey("ns", "k", "p", issued), intact, t0.Add(1000 * time.Hour), triggerNone},
		{"new annotation value", newApiKey("ns", "k", "p", issued, withAnnotation("2")), intact, t0, triggerManual},
		{"annotation value already handled (Secret record)", newApiKey("ns", "k", "p", issued, withAnnotation("2")),
			&credentials{KeyID: "apk-x", Secret: "s", Version: 3, RotatedAt: t0, Intact: true, RotateHandled: "2"}, t0, triggerNone},
		{"interval not yet over", newApiKey("ns", "k", "p", issued, withRotation(time.Hour, 0)), intact, t0.Add(59 * time.Minute), triggerNone},
		{"interval over", newApiKey("ns", "k", "p", issued, withRotation(time.Hour, 0)), intact, t0.Add(time.Hour), triggerScheduled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := decideRotation(tt.key, tt.cur, tt.now); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestGracePeriod(t *testing.T) {
	if g := gracePeriod(newApiKey("ns", "k", "p")); g != 24*time.Hour {
		t.Errorf("default grace %v, want 24h", g)
	}
	if g := gracePeriod(newApiKey("ns", "k", "p", withRotation(0, 0))); g != 0 {
		t.Errorf("grace %v, want 0", g)
	}
}

func TestGraceEndNeverEarly(t *testing.T) {
	for _, tc := range []struct {
		now   time.Time
		grace time.Duration
		want  time.Time
	}{
		{t0, 2 * time.Second, t0.Add(2 * time.Second)},
		{t0.Add(300 * time.Millisecond), 2 * time.Second, t0.Add(3 * time.Second)},
		{t0.Add(999 * time.Millisecond), 24 * time.Hour, t0.Add(24*time.Hour + time.Second)},
		{t0.Add(time.Nanosecond), time.Second, t0.Add(2 * time.Second)},
	} {
		got := graceEnd(tc.now, tc.grace)
		if !got.Equal(tc.want) {
			t.Errorf("graceEnd(%s, %s) = %s, want %s", tc.now.Format(time.RFC3339Nano), tc.grace, got.Format(time.RFC3339Nano), tc.want)
		}
		// What is stored (RFC 3339 seconds) must not end before now + grace.
		stored, err := time.Parse(time.RFC3339, got.Format(time.RFC3339))
		if err != nil || stored.Before(tc.now.Add(tc.grace)) {
			t.Errorf("stored end %s (%v) is before now + grace %s", stored, err, tc.now.Add(tc.grace).Format(time.RFC3339Nano))
		}
	}
}

func TestRequeueAt(t *testing.T) {
	if d := requeueAt(t0, time.Time{}, t0.Add(-time.Hour), t0.Add(2*time.Hour), t0.Add(time.Hour)); d != time.Hour {
		t.Errorf("got %v, want 1h (soonest future time)", d)
	}
	if d := requeueAt(t0, t0, time.Time{}); d != 0 {
		t.Errorf("got %v, want 0 (nothing in the future)", d)
	}
}

func TestCredentialsRoundTrip(t *testing.T) {
	id, err := newKeyID()
	if err != nil || !keyIDPattern.MatchString(id) {
		t.Fatalf("key ID %q, %v", id, err)
	}
	secret, err := newSecret()
	if err != nil || !secretPattern.MatchString(secret) {
		t.Fatalf("secret of %d chars, %v", len(secret), err)
	}
	c := credentials{KeyID: id, Secret: secret, Version: 2, RotatedAt: t0, RotateHandled: "x", Intact: true,
		Previous: &previousSecret{Digest: bundle.Digest([]byte("k"), "old"), Version: 1, ExpiresAt: t0.Add(time.Hour)}}
	s := &corev1.Secret{}
	writeCredentials(s, c)
	if got := readCredentials(s); !got.Intact || got.KeyID != id || got.Secret != secret || got.Version != 2 ||
		!got.RotatedAt.Equal(t0) || got.RotateHandled != "x" || got.Previous == nil || !got.Previous.ExpiresAt.Equal(t0.Add(time.Hour)) {
		t.Fatalf("round trip: %+v", got)
	}
	for _, v := range s.Annotations {
		if v == secret {
			t.Fatal("an annotation holds the secret")
		}
	}
	s.Data[CredentialsSecret] = []byte(secret[1:] + "A")
	if readCredentials(s).Intact {
		t.Fatal("an edited secret reads as intact")
	}
}

func TestRandomAlphanumericIsUniform(t *testing.T) {
	counts := map[rune]int{}
	for range 200 {
		s, err := randomAlphanumeric(62)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range s {
			counts[r]++
		}
	}
	if len(counts) != 62 {
		t.Fatalf("%d distinct characters, want 62", len(counts))
	}
	for r, n := range counts { // expected 200 each
		if n < 120 || n > 300 {
			t.Errorf("character %q drawn %d times of an expected 200", r, n)
		}
	}
}

func TestNextSigning(t *testing.T) {
	p := newPolicy("ns", "p", withSigning(keygatev1.EdDSA, time.Hour, 10*time.Minute))
	st, rotated, err := nextSigning(p, signingState{}, t0)
	if err != nil || !rotated || len(st.Keys) != 1 || len(st.HashKey) != hashKeyLength {
		t.Fatalf("first key: %v %v %+v", err, rotated, st)
	}
	same, rotated, _ := nextSigning(p, st, t0.Add(59*time.Minute))
	if rotated || len(same.Keys) != 1 || string(same.HashKey) != string(st.HashKey) {
		t.Fatal("rotated before the interval ended or changed the hash key")
	}
	next, rotated, _ := nextSigning(p, st, t0.Add(time.Hour))
	if !rotated || len(next.Keys) != 2 || next.Keys[1].KeyID != st.Keys[0].KeyID {
		t.Fatalf("rotation: %+v", next.Keys)
	}
	if ret := *next.Keys[1].RetiresAt; ret.Before(t0.Add(time.Hour + 10*time.Minute)) {
		t.Fatalf("previous key retires at %v, before its last token expires", ret)
	}
	if got := requeueAt(t0.Add(time.Hour), nextSigningEvent(p, next)...); got > 11*time.Minute || got < 10*time.Minute {
		t.Fatalf("next wake-up in %v, want the retirement in ~10m", got)
	}
	later, _, _ := nextSigning(p, next, t0.Add(time.Hour+11*time.Minute))
	if len(later.Keys) != 1 {
		t.Fatalf("retired key kept: %d keys", len(later.Keys))
	}
	p.Spec.Signing.Algorithm = keygatev1.RS256
	alg, rotated, _ := nextSigning(p, later, t0.Add(time.Hour+12*time.Minute))
	if !rotated || alg.Keys[0].Algorithm != bundle.AlgRS256 {
		t.Fatal("an algorithm change did not rotate")
	}
}

func TestPruneRevocations(t *testing.T) {
	data := map[string]string{
		"gone":   t0.Add(-bundle.TokenLeeway - time.Second).Format(time.RFC3339),
		"now":    t0.Add(-bundle.TokenLeeway).Format(time.RFC3339),
		"leeway": t0.Add(-time.Second).Format(time.RFC3339), // expired, but sidecars still accept it
		"later":  t0.Add(time.Hour).Format(time.RFC3339),
		"soon":   t0.Add(time.Minute).Format(time.RFC3339),
		"bad":    "not a time",
	}
	kept, next := pruneRevocations(data, t0)
	if len(kept) != 4 || kept["leeway"] == "" || kept["later"] == "" || kept["soon"] == "" || kept["bad"] == "" {
		t.Fatalf("kept %v", kept)
	}
	if want := t0.Add(-time.Second + bundle.TokenLeeway); !next.Equal(want) {
		t.Fatalf("next prune %v, want %v", next, want)
	}
}

func TestResolvePolicyDefaults(t *testing.T) {
	p := resolvePolicy(newPolicy("ns", "p"))
	if p.TokenTTLSeconds != 3600 || p.ClientTokenTTLSeconds != 900 || !p.Basic || p.DefaultAction != "Deny" ||
		len(p.BearerSchemes) != 1 || len(p.Grants) != 3 || len(p.TokenPaths) != 3 || len(p.PublicPaths) != 1 {
		t.Fatalf("defaults not applied: %+v", p)
	}
}

func TestBundleKeyDropsPreviousDigestOfAnotherHashKey(t *testing.T) {
	key := newApiKey("ns", "k", "p")
	key.UID = "uid-1"
	hashKey := []byte("0123456789abcdef0123456789abcdef")
	other := []byte("fedcba9876543210fedcba9876543210")
	for _, tt := range []struct {
		name    string
		madeFor []byte
		want    int
	}{{"same policy key", hashKey, 2}, {"another policy's key", other, 1}} {
		t.Run(tt.name, func(t *testing.T) {
			s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "k-credentials"}}
			writeCredentials(s, credentials{KeyID: "apk-x", Secret: strings.Repeat("s", secretLength), Version: 2, RotatedAt: t0,
				Previous: &previousSecret{Digest: bundle.Digest(tt.madeFor, "old"), Version: 1, ExpiresAt: t0.Add(time.Hour), HashKeyID: hashKeyID(tt.madeFor)}})
			if err := controllerutil.SetControllerReference(key, s, scheme); err != nil {
				t.Fatal(err)
			}
			c, digest := (&credsPass{cur: map[string]*memoCreds{}}).read(s, hashKey)
			k, ok := bundleKey(key, s, c, digest, hashKey, t0)
			if !ok || len(k.Secrets) != tt.want {
				t.Fatalf("ok=%v, %d digests, want %d", ok, len(k.Secrets), tt.want)
			}
		})
	}
}

// The watches map a change to exactly the policies it concerns.
func TestPolicyOfMapsOnlyTheOwningPolicy(t *testing.T) {
	credentialsSecret := func(policy string) *corev1.Secret {
		return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "k-credentials",
			Labels: map[string]string{keygatev1.LabelApiKey: "k", keygatev1.LabelTokenPolicy: policy}}}
	}
	secretHandler, keyHandler := policyOf(policyOfCredentials), policyOf(policyOfApiKey)
	tests := []struct {
		name string
		send func(q apiKeyQueue)
		want []string
	}{
		{"credentials Secret changed", func(q apiKeyQueue) {
			secretHandler.Update(context.Background(), event.UpdateEvent{ObjectOld: credentialsSecret("p1"), ObjectNew: credentialsSecret("p1")}, q)
		}, []string{"p1"}},
		{"unrelated Secret", func(q apiKeyQueue) {
			secretHandler.Create(context.Background(), event.CreateEvent{Object: &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "x",
				Labels: map[string]string{keygatev1.LabelTokenPolicy: "p1"}}}}, q)
		}, nil},
		{"ApiKey moved between policies", func(q apiKeyQueue) {
			keyHandler.Update(context.Background(), event.UpdateEvent{ObjectOld: newApiKey("ns", "k", "p1"), ObjectNew: newApiKey("ns", "k", "p2")}, q)
		}, []string{"p1", "p2"}},
		{"ApiKey deleted", func(q apiKeyQueue) {
			keyHandler.Delete(context.Background(), event.DeleteEvent{Object: newApiKey("ns", "k", "p3")}, q)
		}, []string{"p3"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[reconcile.Request]())
			defer q.ShutDown()
			tt.send(q)
			var got []string
			for q.Len() > 0 {
				req, _ := q.Get()
				if req.Namespace != "ns" {
					t.Errorf("request in namespace %q", req.Namespace)
				}
				got = append(got, req.Name)
				q.Done(req)
			}
			slices.Sort(got)
			if !slices.Equal(got, tt.want) {
				t.Errorf("queued %v, want %v", got, tt.want)
			}
		})
	}
}

// A pass reads each credentials Secret once per resourceVersion: the next
// pass reuses it (same digest bytes), a new version or another hash key is
// read again, and a Secret the pass did not read is dropped.
func TestCredsMemo(t *testing.T) {
	g := NewWithT(t)
	hashKey, other := bytes.Repeat([]byte{1}, hashKeyLength), bytes.Repeat([]byte{2}, hashKeyLength)
	secretOf := func(name, rv, secret string) *corev1.Secret {
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, ResourceVersion: rv}}
		writeCredentials(s, credentials{KeyID: "apk-" + name, Secret: secret, Version: 1, RotatedAt: time.Unix(0, 0)})
		return s
	}
	policy := types.NamespacedName{Namespace: "ns", Name: "p"}
	var m credsMemo
	a1, b1 := secretOf("a", "1", strings.Repeat("a", secretLength)), secretOf("b", "1", strings.Repeat("b", secretLength))
	pass := m.begin(policy)
	ca, da := pass.read(a1, hashKey)
	g.Expect(ca.KeyID).To(Equal("apk-a"))
	g.Expect(da).To(Equal(bundle.Digest(hashKey, strings.Repeat("a", secretLength))))
	pass.read(b1, hashKey)
	m.end(policy, pass)

	pass = m.begin(policy)
	ca2, da2 := pass.read(a1, hashKey)
	g.Expect(ca2).To(BeIdenticalTo(ca), "same resourceVersion: read once")
	g.Expect(&da2[0]).To(BeIdenticalTo(&da[0]))
	a2 := secretOf("a", "2", strings.Repeat("c", secretLength))
	_, da3 := pass.read(a2, hashKey)
	g.Expect(da3).To(Equal(bundle.Digest(hashKey, strings.Repeat("c", secretLength))), "a new version is read again")
	_, da4 := pass.read(a2, other)
	g.Expect(da4).To(Equal(bundle.Digest(other, strings.Repeat("c", secretLength))), "another hash key digests again")
	m.end(policy, pass)
	g.Expect(m.begin(policy).old).To(HaveLen(1), "b was not read by the last pass")
}
