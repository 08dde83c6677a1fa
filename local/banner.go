package local

import (
	"fmt"
	"strings"
)

// banner prints what runs where, what the webhook injected, and the commands.
func (r *runner) banner(env *Env) {
	w := &strings.Builder{}
	defer func() { r.say(w.String()) }()
	fmt.Fprintf(w, "\nkeygate is running. Ctrl-C stops everything and removes %s.\n\n", env.RunDir)
	fmt.Fprintf(w, "  kube-apiserver  %s (kubeconfig %s)\n", hostURL(env.Addresses[0]), env.Kubeconfig)
	fmt.Fprintf(w, "  manager         pid %d, webhook https://localhost:%d/mutate-v1-pod, log %s\n", r.managerPID, r.webhookPort, r.managerLog)
	fmt.Fprintf(w, "  demo upstream   http://%s (echoes method, path and the X-Keygate-* headers)\n", r.upstreamAddr)
	for _, s := range r.sidecars {
		fmt.Fprintf(w, "  sidecar         http://%-21s policy %-16s admin http://%s/readyz, log %s\n", s.addr, s.policy, s.admin, s.proc.log)
	}

	fmt.Fprintf(w, "\nWhat the webhook injected into the labelled pods (there is no kubelet here, so they are\n"+
		"never scheduled or run; the sidecars above are the same binary, run as processes):\n")
	for i, p := range r.pods {
		fmt.Fprint(w, describeInjection(p, i == 0))
	}
	fmt.Fprintf(w, "\nLeast privilege: each sidecar authenticates as its pod's service account\n"+
		"(system:serviceaccount:%s:demo-<policy>), which holds only the Role the operator\n"+
		"granted it: watch its policy's bundle Secret, patch its revocations ConfigMap. It may not read\n"+
		"ApiKey credentials (checked).\n", r.opts.Namespace)

	fmt.Fprintf(w, "\nPaste into a shell (curl and kubectl):\n\nexport KUBECONFIG=%s\n", env.Kubeconfig)
	if env.PluginDir != "" {
		fmt.Fprintf(w, "export PATH=%s:\"$PATH\"   # kubectl finds the keygate plugin there\n", shellWord(env.PluginDir))
	}
	w.WriteString(Render(env.Flows))
	w.WriteString("\n")
}

func hostURL(hostport string) string {
	if strings.HasPrefix(hostport, "http") {
		return hostport
	}
	return "https://" + hostport
}
