# keygate — build, generate, test. `make help` lists the targets.
SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec

BIN := $(CURDIR)/bin
CONTROLLER_GEN := $(BIN)/controller-gen
GOLANGCI_LINT := $(BIN)/golangci-lint
HELM := $(BIN)/helm
ENVTEST_ASSETS := $(BIN)/k8s
# envtest waits 20 s for kube-apiserver by default: too short on a busy 2-core
# machine (a slow start is not a failure of the code under test).
export KUBEBUILDER_CONTROLPLANE_START_TIMEOUT ?= 2m
GO_TEST_FLAGS ?= -count=1 -timeout=30m
FUZZTIME ?= 5s
# Minimizing a new input runs it over and over (Go's default: for 60 s); an
# input of FuzzRawRequest that waits on the sidecar's timeouts made that look
# like a stall with 0 execs/s, so minimization is bounded.
FUZZMINIMIZETIME ?= 10s

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_-]+:.*?##/ { printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

##@ Development

.PHONY: manifests
manifests: $(CONTROLLER_GEN) ## Generate CRDs, RBAC and webhook configuration from markers.
	$(CONTROLLER_GEN) rbac:roleName=keygate-manager crd webhook paths="./..." output:crd:artifacts:config=config/crd/bases
	mkdir -p charts/keygate/crds && cp config/crd/bases/*.yaml charts/keygate/crds/

.PHONY: generate
generate: $(CONTROLLER_GEN) ## Generate deepcopy code.
	$(CONTROLLER_GEN) object:headerFile="hack/boilerplate.go.txt" paths="./api/..."

.PHONY: fmt
fmt: ## Run gofmt on the code.
	gofmt -l -w $$(git ls-files '*.go')

.PHONY: vet
vet: ## Run go vet (the real-node tests too: build tag e2enode).
	go vet -tags e2enode ./...

.PHONY: lint
lint: $(GOLANGCI_LINT) ## Run golangci-lint (gosec, errorlint, ...).
	$(GOLANGCI_LINT) run --allow-parallel-runners ./...

.PHONY: helm-lint
helm-lint: $(HELM) ## Lint and render the Helm chart.
	$(HELM) lint charts/keygate
	$(HELM) template t charts/keygate --namespace keygate-system >/dev/null
	$(HELM) template t charts/keygate --namespace keygate-system --set webhook.certMode=cert-manager >/dev/null
	@if $(HELM) template t charts/keygate --set image.tag=latest >/dev/null 2>&1; then \
		echo "helm-lint: values.schema.json accepted image.tag=latest" >&2; exit 1; fi

.PHONY: verify
verify: $(CONTROLLER_GEN) ## Regenerate everything and fail if a generated file was stale or Go code unformatted.
	hack/verify.sh

.PHONY: envtest
envtest: ## Build kube-apiserver and etcd for envtest into bin/k8s (once).
	hack/envtest.sh >/dev/null

.PHONY: test
test: verify vet lint envtest $(HELM) ## Verify generated files, lint, run every Go test against a real API server, the short fault suite (figures printed), then each fuzz target briefly.
	KUBEBUILDER_ASSETS=$(ENVTEST_ASSETS) go test $(GO_TEST_FLAGS) $$(go list ./... | grep -v '/test/faults$$')
	KUBEBUILDER_ASSETS=$(ENVTEST_ASSETS) go test $(GO_TEST_FLAGS) -v ./test/faults
	$(MAKE) --no-print-directory fuzz

.PHONY: faults
faults: envtest ## Run the fault suite with the full counts (manager + 3 sidecars as processes, load, outages, kills); prints one line of figures per scenario.
	KEYGATE_FAULTS=long KUBEBUILDER_ASSETS=$(ENVTEST_ASSETS) go test -count=1 -timeout=30m -v ./test/faults

# Fuzz targets as package:FuzzName; `make fuzz FUZZTIME=1m` runs them longer.
FUZZ_TARGETS := ./sidecar/authn:FuzzParseAuthorization ./sidecar/tokenendpoint:FuzzParseTokenRequest ./sidecar/server:FuzzRawRequest \
	./sidecar/token:FuzzVerify ./sidecar/config:FuzzCompile ./controllers/podinject:FuzzInject ./sidecar/wire:FuzzParseRequest

.PHONY: fuzz
# Go 1.26's fuzz coordinator can fail a target with a bare "context deadline
# exceeded" when -fuzztime ends while a worker is mid-input (golang/go#75804,
# fixed in Go 1.27): that outcome, with no failing input written and no other
# failure, is reported and not counted. Every other failure fails the target.
fuzz: ## Run each fuzz target for FUZZTIME (default 5s) on top of its seed corpus.
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "go test -run='^$$' -fuzz='^$$name$$' -fuzztime=$(FUZZTIME) -fuzzminimizetime=$(FUZZMINIMIZETIME) $$pkg"; \
		if ! go test -run='^$$' -fuzz="^$$name\$$" -fuzztime=$(FUZZTIME) -fuzzminimizetime=$(FUZZMINIMIZETIME) $$pkg 2>&1 | tee $(BIN)/fuzz.out; then \
			if grep -qx '    context deadline exceeded' $(BIN)/fuzz.out && ! grep -q 'Failing input written' $(BIN)/fuzz.out \
				&& [ "$$(grep -c -- '--- FAIL' $(BIN)/fuzz.out)" -eq 1 ]; then \
				echo "fuzz: $$name stopped by Go's fuzztime race (golang/go#75804), no failing input: not a failure"; \
			else exit 1; fi; \
		fi; \
		if grep -q 'no fuzz tests to fuzz' $(BIN)/fuzz.out; then echo "fuzz: no target $$name in $$pkg" >&2; exit 1; fi; \
	done; rm -f $(BIN)/fuzz.out

.PHONY: fuzz-long
fuzz-long: ## Run each fuzz target for 2 minutes (not part of `make test`).
	$(MAKE) --no-print-directory fuzz FUZZTIME=2m

.PHONY: build
build: ## Build the manager and the sidecar into bin/.
	CGO_ENABLED=0 go build -o $(BIN)/manager ./cmd/manager
	CGO_ENABLED=0 go build -o $(BIN)/sidecar ./cmd/sidecar

.PHONY: run
run: build plugin envtest ## Run all of keygate on this machine (control plane, manager + webhook, samples, sidecars) and print working curls; Ctrl-C stops it.
	CGO_ENABLED=0 go build -o $(BIN)/keygate-local ./cmd/keygate-local
	$(BIN)/keygate-local --bin-dir $(BIN) --config-dir config

IMAGE_TAG ?= v0.1.0
PLUGIN_VERSION ?= $(IMAGE_TAG)

.PHONY: plugin
plugin: ## Build the kubectl plugin into bin/kubectl-keygate (with bin/ on PATH: `kubectl keygate ...`).
	CGO_ENABLED=0 go build -ldflags "-X github.com/keygate-dev/keygate/plugin/cli.Version=$(PLUGIN_VERSION)" -o $(BIN)/kubectl-keygate ./cmd/kubectl-keygate

.PHONY: images
images: build ## Build the manager and sidecar images without Docker, as tarballs in bin/images (pinned tags).
	cd hack/image && go run . -binary $(BIN)/manager -tag keygate/manager:$(IMAGE_TAG) -out $(BIN)/images/manager-$(IMAGE_TAG).tar
	cd hack/image && go run . -binary $(BIN)/sidecar -tag keygate/sidecar:$(IMAGE_TAG) -out $(BIN)/images/sidecar-$(IMAGE_TAG).tar

.PHONY: bench
bench: envtest ## Run the benchmarks and print their figures.
	KUBEBUILDER_ASSETS=$(ENVTEST_ASSETS) go test -run='^$$' -bench=. -benchmem ./...

##@ Real node (root, cgroup v1; see docs/e2e.md)

.PHONY: e2e-images
e2e-images: images ## Build the demo upstream image into bin/images too (what the e2e node imports).
	CGO_ENABLED=0 go build -o $(BIN)/demo-upstream ./cmd/demo-upstream
	cd hack/image && go run . -binary $(BIN)/demo-upstream -tag keygate/demo-upstream:$(IMAGE_TAG) -out $(BIN)/images/demo-upstream-$(IMAGE_TAG).tar

.PHONY: e2e-node-up
e2e-node-up: e2e-images ## Build the node's binaries (once, ~15-20 min cold) and start a real single-node cluster; prints its kubeconfig.
	hack/node.sh up

.PHONY: e2e-node-down
e2e-node-down: ## Stop the node and leave the host as it was before e2e-node-up.
	hack/node.sh down

.PHONY: e2e
e2e: e2e-images $(HELM) ## Helm-install keygate on a real node and test it end to end (test/node); always tears the node down.
	hack/e2e.sh

$(CONTROLLER_GEN):
	hack/tools.sh controller-gen
$(GOLANGCI_LINT):
	hack/tools.sh golangci-lint
$(HELM):
	hack/tools.sh helm

.PHONY: bench-operator
bench-operator: envtest ## Benchmark the operator: 1,000 ApiKeys on envtest; prints time to Ready, change→bundle p50/p99, peak RSS.
	KUBEBUILDER_ASSETS=$(ENVTEST_ASSETS) go test -run='^$$' -bench=BenchmarkOperator -benchtime=1x -count=1 -timeout=10m ./test/bench/operator

.PHONY: bench-scale
bench-scale: envtest ## Benchmark at scale: manager + sidecar as processes vs the API server's ceiling; N from BENCH_SCALE_N (default 1000,10000).
	KUBEBUILDER_ASSETS=$(ENVTEST_ASSETS) go test -run='^$$' -bench=BenchmarkScale -benchtime=1x -count=1 -timeout=60m ./test/bench/scale

.PHONY: bench-write-costs
bench-write-costs: envtest ## API server CPU per request for each write a new key needs (creates, status patch/update/apply, the least status write): the floor of bench-scale's ratio; BENCH_PROFILE=<dir> saves the API server's CPU profiles.
	KUBEBUILDER_ASSETS=$(ENVTEST_ASSETS) go test -run='^$$' -bench=BenchmarkWriteCosts -benchtime=1x -count=1 -timeout=30m ./test/bench/scale

.PHONY: bench-peers
bench-peers: ## Benchmark keygate against HAProxy, nginx and a Go ReverseProxy (installs them and wrk from Debian); prints req/s, p50/p99, CPU µs/request.
	hack/peers.sh
	go test -tags peers -run='^$$' -bench=BenchmarkPeers -benchtime=1x -count=1 -timeout=15m ./test/bench/peers

.PHONY: bench-sidecar
bench-sidecar: ## Benchmark the sidecar: req/s, p50/p99 and ratio to a plain reverse proxy; TLS/h2/h2c listeners (req/s, CPU per request); token issuance; RSS.
	go test -run='^$$' -bench=. -benchmem -count=1 -timeout=20m ./test/bench/sidecar
