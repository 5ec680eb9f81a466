# xform — make targets. `make test` is what CI runs (through .ci/run).
GO      ?= go
BIN     ?= bin/xform
PKGS    := ./...

.PHONY: build build-onnx static test test-onnx vet fmt-check demo fuzz bench clean gpu-bundle

build:
	$(GO) build -o $(BIN) ./cmd/xform

# xform with `generate --onnx` (cgo, ONNX Runtime loaded at run time; see docs/onnx.md).
build-onnx:
	$(GO) build -tags onnxruntime -o bin/xform-ort ./cmd/xform

# A fully static binary (no cgo): what runs on the GPU machine and any Linux box.
static:
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN) ./cmd/xform

# Binaries for the GPU machine (no Go there): xform and the GPU test binaries, static and
# xz-compressed into .device/ (the device tool carries at most 64 MiB); tools/gpu/run_checks.sh
# runs them there.
gpu-bundle:
	mkdir -p .device
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o .device/xform ./cmd/xform
	CGO_ENABLED=0 $(GO) test -c -ldflags='-s -w' -o .device/cudatest ./kernels/cuda
	CGO_ENABLED=0 $(GO) test -c -ldflags='-s -w' -o .device/clitest ./cmd/xform
	cd .device && for f in xform cudatest clitest; do xz -T0 -9 -f $$f; done

vet:
	$(GO) vet $(PKGS)

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# Unit, reference-parity and Python-side round-trip tests. Python checks need
# tools/requirements-ci.txt installed; with CI=true a missing Python dependency fails the run.
test: vet fmt-check
	$(GO) test -count=1 -timeout 40m $(PKGS)
	$(MAKE) test-onnx

# xform generate --onnx (cgo build tag onnxruntime, libonnxruntime from the onnxruntime wheel);
# its tests skip when the library cannot be found.
test-onnx:
	CGO_ENABLED=1 $(GO) test -count=1 -tags onnxruntime -run 'TestGenerateONNX|TestGenerateOneSentence' ./onnxrun/ ./cmd/xform/

demo: build
	$(BIN) demo

# Each parser's fuzz target for a while (FUZZTIME=5m make fuzz for longer).
FUZZTIME ?= 30s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzRead$$' -fuzztime $(FUZZTIME) ./fairseqpt
	$(GO) test -run '^$$' -fuzz '^FuzzPickle$$' -fuzztime $(FUZZTIME) ./fairseqpt
	$(GO) test -run '^$$' -fuzz '^FuzzParseProfile$$' -fuzztime $(FUZZTIME) ./admin
	$(GO) test -run '^$$' -fuzz '^FuzzRead$$' -fuzztime $(FUZZTIME) ./safetensors
	for t in FuzzReadDictionary FuzzMMapIndex FuzzTNTIndex FuzzTokenize; do \
		$(GO) test -run '^$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) ./train/data || exit 1; done
	$(GO) test -run '^$$' -fuzz '^FuzzUnmarshal$$' -fuzztime $(FUZZTIME) ./onnxio

bench:
	$(GO) test -run '^$$' -bench . -benchtime 3x ./...

clean:
	rm -rf bin
