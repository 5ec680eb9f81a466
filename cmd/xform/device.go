package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/kernels/cpu"
	"github.com/xform-dev/xform/kernels/cuda"
	"github.com/xform-dev/xform/model"
)

// deviceFlag is --device: which backend runs the model. Empty means automatic: the
// GPU when one is usable, else the CPU with a one-line note on stderr saying why.
type deviceFlag struct {
	name   string
	stderr io.Writer
	ctx    context.Context
	gpu    *cuda.Backend // closed when the command ends
	noted  bool
	// precision is the GPU's GEMM precision (--fp16, --bf16); anything but FP32
	// refuses the CPU, explicit or fallen back to.
	precision cuda.Precision
	// graphs is --cuda-graphs (training commands): record each batch shape's training
	// step as a CUDA graph and replay it.
	graphs bool
	// autotune is --cuda-autotune (training commands): time cuBLASLt's candidates for
	// each new GEMM shape class once and keep the fastest.
	autotune bool
	// deferDW is --cuda-defer-dw (training commands, on by default): the layers' weight
	// gradients wait for the end of the backward and same-shape ones run batched.
	deferDW bool
	// pack is --pack-tokens (training commands): auto, true or false (packRows).
	pack string
}

// packRows applies --pack-tokens to net: true packs every step with pads
// (model.TrainNet.SetPackedRows), false none, and auto (the default) packs where it
// pays on a GPU with 16-bit GEMMs (SetPackedRowsWherePaying) and nowhere else: on
// the CPU, and on the GPU in float32, the default stays the padded step, whose float32
// sums group as the reference's do. It returns whether packing is on.
func (d *deviceFlag) packRows(net *model.TrainNet, be kernels.Trainer) (bool, error) {
	var on bool
	var err error
	switch strings.ToLower(strings.TrimSpace(d.pack)) {
	case "auto", "":
		if _, gpu := be.(*cuda.Backend); gpu && d.precision != cuda.FP32 {
			on, err = true, net.SetPackedRowsWherePaying()
		} else {
			err = net.SetPackedRows(false)
		}
	case "true", "1", "on":
		on, err = true, net.SetPackedRows(true)
	case "false", "0", "off":
		err = net.SetPackedRows(false)
	default:
		err = fmt.Errorf("--pack-tokens %q: want auto, true or false", d.pack)
	}
	if err != nil {
		return false, usageError{err}
	}
	return on, nil
}

// registerGraphs adds --cuda-graphs, --cuda-autotune and --cuda-defer-dw to a training
// command.
func (d *deviceFlag) registerGraphs(c *cobra.Command) {
	c.Flags().BoolVar(&d.graphs, "cuda-graphs", false, "GPU: record the training step of each batch shape as a CUDA graph and replay it (same results, less launch overhead; pays off when shapes repeat, e.g. --batching bucket)")
	c.Flags().BoolVar(&d.autotune, "cuda-autotune", false, "GPU: time cuBLASLt's candidate algorithms once per new GEMM shape class and keep the fastest (+2% on repeating shapes, e.g. --batching bucket; each new class waits for the GPU once, so short runs with fairseq batching pay more than they gain)")
	c.Flags().StringVar(&d.pack, "pack-tokens", "auto", "compute the projections, feed-forward blocks, LayerNorms, attention and the loss on the batch's real tokens only (the same sums; with dropout, other masks), skipping the pad slots' work: auto (on with --bf16/--fp16 on the GPU, for steps whose attention runs on packed rows: +9% on the 2-bucket 6L-6L bench), true (every step with pads; ~15% faster on the CPU) or false; packed steps run without --cuda-graphs")
	c.Flags().Lookup("pack-tokens").NoOptDefVal = "true"
	c.Flags().BoolVar(&d.deferDW, "cuda-defer-dw", true, "GPU, bf16/fp16: compute the layers' weight and bias gradients at the end of the backward, same-shape ones as one batched GEMM (+6-7% on the 6L-6L bench; =false computes each in its layer's backward, as before)")
}

// register adds --device to c and wraps c.RunE so that the GPU is released when the
// command ends and a GPU failure inside the run (out of memory, a driver fault: the
// backend interface has no error results, so these arrive as panics) becomes the
// command's error instead of a crash.
func (d *deviceFlag) register(c *cobra.Command) {
	c.Flags().StringVar(&d.name, "device", "", "compute device: cuda, cuda:N or cpu (default: cuda when a GPU is usable, else cpu; xform env says which)")
	inner := c.RunE
	c.RunE = func(cmd *cobra.Command, args []string) (err error) {
		d.stderr, d.ctx = cmd.ErrOrStderr(), cmd.Context()
		defer d.close()
		defer cuda.Guard(&err)
		return inner(cmd, args)
	}
}

func (d *deviceFlag) close() {
	if d.gpu == nil {
		return
	}
	defer func() { _ = recover() }() // a GPU that already failed may fail to close too
	_ = d.gpu.Close()
	d.gpu = nil
}

// backend returns the backend --device asks for. threads and opts configure the CPU
// backend only; precision the GPU's GEMMs only.
func (d *deviceFlag) backend(threads int, opts ...cpu.Option) (kernels.Backend, error) {
	name := strings.TrimSpace(d.name)
	if name == "cpu" {
		if d.precision != cuda.FP32 {
			return nil, usageError{fmt.Errorf("--%s needs a GPU (--device cuda)", d.precision)}
		}
		return cpu.New(threads, opts...), nil
	}
	ordinal := 0
	switch {
	case name == "" || name == "cuda":
	case strings.HasPrefix(name, "cuda:"):
		n, err := strconv.Atoi(strings.TrimPrefix(name, "cuda:"))
		if err != nil || n < 0 {
			return nil, usageError{fmt.Errorf("--device %q: want cpu, cuda or cuda:N", d.name)}
		}
		ordinal = n
	default:
		return nil, usageError{fmt.Errorf("--device %q: want cpu, cuda or cuda:N", d.name)}
	}
	ctx := d.ctx
	if ctx == nil {
		ctx = context.Background()
	}
	if d.gpu != nil {
		return d.gpu, nil
	}
	g, err := cuda.New(ctx, cuda.Options{Ordinal: ordinal, Precision: d.precision, Graphs: d.graphs, Autotune: d.autotune, DeferWeightGrads: d.deferDW})
	if err == nil {
		d.gpu = g
		return g, nil
	}
	if name != "" {
		return nil, fmt.Errorf("--device %s: %w (run xform env for details)", name, err)
	}
	if d.precision != cuda.FP32 {
		return nil, usageError{fmt.Errorf("--%s needs a GPU (--device cuda), and none is usable: %s (xform env explains)", d.precision, firstLine(err.Error()))}
	}
	if !d.noted {
		w := d.stderr
		if w == nil {
			w = os.Stderr
		}
		fmt.Fprintf(w, "xform: running on the CPU: %s (--device cpu silences this; xform env explains)\n", firstLine(err.Error()))
		d.noted = true
	}
	return cpu.New(threads, opts...), nil
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// trainer is backend for commands that train: both backends implement kernels.Trainer.
func (d *deviceFlag) trainer(threads int, opts ...cpu.Option) (kernels.Trainer, error) {
	b, err := d.backend(threads, opts...)
	if err != nil {
		return nil, err
	}
	t, ok := b.(kernels.Trainer)
	if !ok {
		return nil, fmt.Errorf("--device %s: the %s backend cannot train", d.name, b.Name())
	}
	return t, nil
}
