package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/spf13/cobra"
	"github.com/xform-dev/xform/convert"
)

// exportFlags holds every flag of `xform export`. Each target format has its own run
// function; --onnx is implemented here, --fairseq is added by its owner beside it.
type exportFlags struct {
	onnx      bool
	out       string
	force     bool
	fp16      bool
	keepOmega bool
	opset     int
}

func newExportCmd() *cobra.Command {
	var f exportFlags
	var fs exportFairseqOptions // --fairseq: export_fairseq.go
	cmd := &cobra.Command{
		Use:   "export --onnx CKPT -o DIR",
		Short: "Export a model to ONNX (optimum's encoder/decoder layout)",
		Long: `Export writes a model (fairseq checkpoint, checkpoint directory or xform model
directory) in another format.

--onnx writes encoder_model.onnx, decoder_model.onnx, decoder_with_past_model.onnx,
decoder_model_merged.onnx (the file layout and tensor names of Hugging Face optimum),
config.json, generation_config.json and the dictionaries found beside the checkpoint.
Opset 17 by default (native LayerNormalization); batch and sequence axes are dynamic.
--fp16 stores weights and activations in fp16; LayerNorm and softmax run in fp32.

Admin models are folded by default (as xform fold does: ω moves into LayerNorm γ/β and
the consuming projections, the fold report is printed; exact unless --keep-architecture),
so the graphs are a plain Post-LN Transformer. --keep-omega instead exports ω as an
explicit Mul per residual and keeps the original weights and embedding layout.

The output is all or nothing: it is written to a temporary directory beside DIR and
renamed into place; an existing DIR is an error unless --force.`,
		Example: `  xform export --onnx checkpoint_last.pt -o onnx/
  xform export --onnx run/ckpt/ -o onnx-fp16/ --fp16
  python3 examples/onnx_translate.py onnx/ --data-bin data-bin --beam 4`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if f.out == "" {
				return usageError{fmt.Errorf("export: -o DIR is required")}
			}
			switch {
			case f.onnx && fs.enabled:
				return usageError{fmt.Errorf("export: choose one format: --onnx or --fairseq")}
			case f.onnx:
				return runExportONNX(cmd, args[0], f, fs.fold)
			case fs.enabled:
				fs.Out, fs.Force = f.out, f.force
				return runExportFairseq(cmd, args[0], fs)
			}
			return usageError{fmt.Errorf("export: choose a format: --onnx or --fairseq")}
		},
	}
	fl := cmd.Flags()
	fl.BoolVar(&f.onnx, "onnx", false, "export ONNX graphs")
	fl.StringVarP(&f.out, "output", "o", "", "output directory (required)")
	fl.BoolVar(&f.force, "force", false, "replace an existing output directory")
	fl.BoolVar(&f.fp16, "fp16", false, "ONNX: fp16 weights and activations (LayerNorm and softmax in fp32)")
	fl.BoolVar(&f.keepOmega, "keep-omega", false, "ONNX, Admin models: keep ω as explicit Mul nodes instead of folding it")
	fl.IntVar(&f.opset, "opset", convert.DefaultONNXOpset, "ONNX: ai.onnx opset (17-21)")
	addExportFairseqFlags(cmd, &fs)
	return cmd
}

// runExportONNX exports ckpt's model as ONNX; an Admin model is folded first (with the
// fold flags export shares with xform fold) unless --keep-omega.
func runExportONNX(cmd *cobra.Command, src string, f exportFlags, fold foldFlags) error {
	if f.opset < 17 {
		return usageError{fmt.Errorf("export: --opset %d: LayerNormalization needs opset ≥ 17", f.opset)}
	}
	im, err := convert.Import(src)
	if err != nil {
		return err
	}
	defer im.Close()
	m := im.Model
	opt := convert.ONNXOptions{Opset: f.opset, FP16: f.fp16, KeepOmega: f.keepOmega}
	if m.Config.Init.HasOmega() && !f.keepOmega {
		res, err := foldAndReport(cmd, im, fold)
		if err != nil {
			return fmt.Errorf("export: fold %s: %w (--keep-omega exports ω as Mul nodes instead)", im.Source, err)
		}
		m = res.Model
	}
	if f.keepOmega && !m.Config.Init.HasOmega() {
		fmt.Fprintf(cmd.ErrOrStderr(), "export: note: --keep-omega ignored: the model (init %s) has no ω\n", m.Config.Init)
	}
	if err := convert.ExportONNXDir(f.out, m, opt, convert.ONNXDirOptions{SrcDict: im.SrcDict, TgtDict: im.TgtDict, Force: f.force}); err != nil {
		return err
	}
	return printDirSizes(cmd, f.out, fmt.Sprintf("exported %s (%s, %d+%d layers) to ONNX opset %d", im.Source, m.Config.Arch, m.Config.EncoderLayers, m.Config.DecoderLayers, f.opset))
}

// printDirSizes lists the files written, so the user sees what the export produced.
func printDirSizes(cmd *cobra.Command, dir, head string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	sort.Slice(ents, func(i, j int) bool { return ents[i].Name() < ents[j].Name() })
	w := cmd.OutOrStdout()
	fmt.Fprintln(w, head)
	for _, e := range ents {
		if fi, err := e.Info(); err == nil {
			fmt.Fprintf(w, "  %-48s %12s bytes\n", filepath.Join(dir, e.Name()), commas(fi.Size()))
		}
	}
	return nil
}
