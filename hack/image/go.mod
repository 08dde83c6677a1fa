// Tool module that builds keygate's container images without Docker: a
// static binary and the CA certificates on an empty base, written as an OCI
// image tarball that `ctr images import` (containerd) or `crane push` load.
module github.com/keygate-dev/keygate/hack/image

go 1.26

require github.com/google/go-containerregistry v0.22.1

require (
	github.com/klauspost/compress v1.19.2 // indirect
	github.com/opencontainers/go-digest v1.0.0 // indirect
	github.com/opencontainers/image-spec v1.1.1 // indirect
)
