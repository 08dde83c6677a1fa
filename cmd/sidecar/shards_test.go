package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"testing"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/keygate-dev/keygate/api/bundle"
	"github.com/keygate-dev/keygate/controllers/sidecaraccess"
	"github.com/keygate-dev/keygate/sidecar/bundletest"
)

// writeSharded writes the fixture as a v2 bundle of count shards, the shards
// first and the index last, as the operator does.
func writeSharded(t *testing.T, ns, pol string, f *bundletest.Fixture, count int) {
	ctx := context.Background()
	put := func(name string, data []byte) {
		s, err := admin.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			_, err = admin.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name},
				Data: map[string][]byte{bundle.SecretDataKey: data}}, metav1.CreateOptions{})
			must(t, err)
			return
		}
		s.Data[bundle.SecretDataKey] = data
		_, err = admin.CoreV1().Secrets(ns).Update(ctx, s, metav1.UpdateOptions{})
		must(t, err)
	}
	names := bundle.ShardNames(pol, count)
	for i, name := range names {
		doc := bundle.Shard{Version: bundle.ShardFormatVersion, Count: count, Index: i, HashKeyID: bundle.HashKeyID(f.Bundle.HashKey), Keys: []bundle.Key{}}
		for _, k := range f.Bundle.Keys {
			if bundle.ShardOf(k.KeyID, count) == i {
				doc.Keys = append(doc.Keys, k)
			}
		}
		data, err := json.Marshal(&doc)
		must(t, err)
		put(name, data)
	}
	index := f.Bundle
	index.Version, index.Keys, index.Shards = bundle.FormatVersionV2, nil, names
	must(t, index.Validate())
	data, err := json.Marshal(&index)
	must(t, err)
	put(bundle.SecretName(pol), data)
}

// A sidecar of a sharded policy, holding only the Role the operator grants
// (the index and its shards, by name), runs on the whole bundle and applies
// a change to one shard within the propagation bound.
func TestShardedBundleFromKubernetes(t *testing.T) {
	const ns, pol = "sharded", "big-api"
	ctx := context.Background()
	_, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	must(t, err)
	f := bundletest.New(bundle.AlgEdDSA)
	f.Bundle.Policy.Namespace, f.Bundle.Policy.Name = ns, pol
	f.Bundle.Policy.DefaultAction = "Authenticated"
	var ids []string
	for i := range 12 {
		id := "apk-" + strconv.Itoa(i)
		f.AddKey(id, []string{"charges:List"})
		ids = append(ids, id)
	}
	writeSharded(t, ns, pol, f, 4)
	_, err = admin.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: bundle.RevocationsConfigMapName(pol)}}, metav1.CreateOptions{})
	must(t, err)
	role := sidecaraccess.RoleName(pol)
	_, err = admin.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: role},
		Rules: sidecaraccess.Rules(pol, bundle.ShardNames(pol, 4)...)}, metav1.CreateOptions{})
	must(t, err)
	_, err = admin.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: role},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: role},
		Subjects: []rbacv1.Subject{{Kind: "User", Name: "keygate-sidecar"}}}, metav1.CreateOptions{})
	must(t, err)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(`{"ok":true}`)) }))
	defer up.Close()
	sc := startInstance(t, "sharded", up.Listener.Addr().(*net.TCPAddr).Port, "--policy", pol, "--namespace", ns)

	for _, id := range ids {
		if code := sc.get(basic(id, f.Secrets[id])); code != 200 {
			t.Fatalf("key %s of shard %d: %d", id, bundle.ShardOf(id, 4), code)
		}
	}
	// One key removed (disabled): its shard is rewritten, nothing else.
	gone := ids[7]
	f.Bundle.Keys = slices.DeleteFunc(f.Bundle.Keys, func(k bundle.Key) bool { return k.KeyID == gone })
	writeSharded(t, ns, pol, f, 4)
	eventually(t, propagation, "the removed key refused", func() bool { return sc.get(basic(gone, f.Secrets[gone])) == 401 })
	for _, id := range ids {
		if want := 200; id != gone && sc.get(basic(id, f.Secrets[id])) != want {
			t.Fatalf("key %s stopped working after another shard changed", id)
		}
	}
	// A new key lands in its shard.
	f.AddKey("apk-new", []string{"charges:List"})
	writeSharded(t, ns, pol, f, 4)
	eventually(t, propagation, fmt.Sprintf("the new key (shard %d)", bundle.ShardOf("apk-new", 4)),
		func() bool { return sc.get(basic("apk-new", f.Secrets["apk-new"])) == 200 })
}
