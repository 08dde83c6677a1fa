//go:build e2enode

package node

import (
	"bufio"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keygatev1 "github.com/keygate-dev/keygate/api/v1alpha1"
)

// chartObjects lists "kind/name namespace" of every object of the release's
// manifest.
func chartObjects(t *testing.T) [][2]string {
	t.Helper()
	manifest := helm(t, "get", "manifest", release, "-n", systemNamespace)
	var objs [][2]string
	var kind, name, ns string
	flush := func() {
		if kind != "" && name != "" {
			objs = append(objs, [2]string{kind + "/" + name, ns})
		}
		kind, name, ns = "", "", ""
	}
	sc := bufio.NewScanner(strings.NewReader(manifest))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "---":
			flush()
		case strings.HasPrefix(line, "kind: "):
			kind = strings.TrimPrefix(line, "kind: ")
		case strings.HasPrefix(line, "  name: ") && name == "":
			name = strings.TrimPrefix(line, "  name: ")
		case strings.HasPrefix(line, "  namespace: ") && ns == "":
			ns = strings.TrimPrefix(line, "  namespace: ")
		}
	}
	flush()
	return objs
}

// 9 (end), issue 17 item 3. helm uninstall removes everything the chart made
// and the manager's Lease; the CRDs (and so the users' keys) stay. A new
// install has a leader at once instead of waiting out the old Lease.
func testUninstall(t *testing.T) {
	g := NewWithT(t)
	objs := chartObjects(t)
	g.Expect(objs).To(ContainElement([2]string{"Deployment/" + managerName, systemNamespace}))
	g.Expect(objs).To(ContainElement([2]string{"Lease/" + leaseName, systemNamespace}))
	g.Eventually(func() string { return leaseHolder(g) }, timeout, interval).ShouldNot(BeEmpty(), "a leader after the upgrades")

	helm(t, "uninstall", release, "-n", systemNamespace, "--wait", "--timeout", "5m")
	for _, o := range objs {
		args := []string{"get", o[0], "--ignore-not-found", "-o", "name"}
		if o[1] != "" {
			args = append(args, "-n", o[1])
		}
		g.Eventually(func() string { return strings.TrimSpace(kubectl(t, args...)) }, timeout, interval).
			Should(BeEmpty(), "%s %s is deleted by helm uninstall", o[0], o[1])
	}
	g.Consistently(func() string { return leaseHolder(g) }, 3*time.Second, 200*time.Millisecond).
		Should(BeEmpty(), "no Lease is left behind (nor recreated by a terminating manager)")
	for _, name := range []string{"apikeys.keygate.dev", "tokenpolicies.keygate.dev"} {
		g.Expect(suite.k8s.Get(t.Context(), client.ObjectKey{Name: name}, &apiextensionsv1.CustomResourceDefinition{})).
			To(Succeed(), "CRDs stay after helm uninstall (docs/operator.md)")
	}
	g.Expect(suite.k8s.Get(t.Context(), client.ObjectKey{Namespace: namespace, Name: "open"}, &keygatev1.ApiKey{})).To(Succeed())

	start := time.Now()
	helm(t, "install", release, "charts/keygate", "-n", systemNamespace, "--wait", "--timeout", "5m")
	g.Eventually(func() string { return leaseHolder(g) }, timeout, 20*time.Millisecond).ShouldNot(BeEmpty())
	figure("helm uninstall -> install: leader after", "%s", seconds(time.Since(start)))
	createKey(t, namespace, "after-reinstall", keygatev1.ApiKeySpec{
		PolicyRef: keygatev1.PolicyReference{Name: "silverflow"}, Permissions: []keygatev1.Permission{"charges:List"},
	})
}
