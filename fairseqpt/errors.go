// Package fairseqpt reads (and writes) torch .pt containers — the zip format of torch ≥1.6 and
// the legacy format of torch ≤1.5 — through a pickle layer that never executes anything from
// the file: known classes map to inert Go data, tensors stay lazy views onto the file.
//
// It knows the generic fairseq checkpoint schema (args / cfg / model / optimizer state), but
// nothing about Transformers: mapping a state dict onto a model is convert's job.
package fairseqpt

import "errors"

// Sentinel errors; every error returned wraps one of these with the file name and detail.
var (
	ErrNotTorch    = errors.New("not a torch checkpoint (neither a torch zip archive nor a legacy torch pickle)")
	ErrTorchScript = errors.New("TorchScript archive (torch.jit.save), not a torch.save checkpoint")
	ErrLegacyTar   = errors.New("pre-0.4 tar-format torch file, not supported")
	ErrTruncated   = errors.New("file is truncated")
	ErrCorrupt     = errors.New("file is corrupt")
	ErrUnsupported = errors.New("unsupported torch file feature")
	ErrNotFairseq  = errors.New("not a fairseq checkpoint")
)
