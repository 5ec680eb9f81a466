package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"github.com/xform-dev/xform/convert"
)

func newInspectCmd() *cobra.Command {
	var asJSON, showState bool
	cmd := &cobra.Command{
		Use:   "inspect CKPT",
		Short: "Show what a fairseq checkpoint (or xform model directory) holds",
		Long: `Inspect reads a fairseq / Transformer-Clinic checkpoint without Python and without
running anything from its pickle, and prints the architecture, dimensions, vocabulary,
dtypes, parameter count, Admin ω per residual branch, optimizer state, training progress,
the fairseq format generation and every pickle global the file names.

CKPT is a .pt file (torch zip or legacy format), a directory holding one (with dict.*.txt
and profile.ratio.init beside it), or a directory written by 'xform import'.`,
		Example: `  xform inspect checkpoints/checkpoint_last.pt
  xform inspect --json checkpoint_best.pt | jq .config
  xform inspect --state model.pt              # also list every stored tensor`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := convert.Inspect(args[0])
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(r)
			}
			printReport(cmd.OutOrStdout(), r, showState)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the full report as JSON (for scripts)")
	cmd.Flags().BoolVar(&showState, "state", false, "list every stored state-dict tensor")
	return cmd
}

func printReport(w io.Writer, r *convert.Report, showState bool) {
	c := r.Config
	p := func(format string, a ...any) { fmt.Fprintf(w, format+"\n", a...) }
	if r.Kind == "fairseq" {
		if r.ArchiveFolder != "" {
			p("%s: fairseq checkpoint, torch %s format (archive folder %q), %s bytes", r.File, r.Container, r.ArchiveFolder, commas(r.Bytes))
		} else {
			p("%s: fairseq checkpoint, torch %s format, %s bytes", r.File, r.Container, commas(r.Bytes))
		}
		p("format generation: %s", r.GenerationDoc)
	} else {
		p("%s: xform model directory", r.File)
	}
	init := string(c.Init)
	if c.Init.HasOmega() {
		init += " (Admin)"
	}
	p("arch: %s   init: %s", c.Arch, init)
	side := func(name string, layers, dim, ffn, heads int, pre, learned bool) {
		ln, pos := "post-LN", "sinusoidal"
		if pre {
			ln = "pre-LN"
		}
		if learned {
			pos = "learned"
		}
		p("%s: %d layers, dim %d, ffn %d, %d heads, %s, %s positions", name, layers, dim, ffn, heads, ln, pos)
	}
	side("encoder", c.EncoderLayers, c.EncoderEmbedDim, c.EncoderFFNDim, c.EncoderHeads, c.EncoderNormalizeBefore, c.EncoderLearnedPos)
	side("decoder", c.DecoderLayers, c.DecoderEmbedDim, c.DecoderFFNDim, c.DecoderHeads, c.DecoderNormalizeBefore, c.DecoderLearnedPos)
	share := "separate embeddings"
	switch {
	case c.ShareAllEmbeddings:
		share = "all embeddings shared"
	case c.ShareDecoderInputOutputEmbed:
		share = "decoder input/output embeddings shared"
	}
	p("vocabulary: source %d, target %d (%s); activation %s", c.SrcVocab, c.TgtVocab, share, c.Activation)
	p("parameters: %s (%s bytes), dtypes %s", commas(int64(r.Params)), commas(r.ParamBytes), strings.Join(r.DTypes, ", "))
	if len(r.Omega) > 0 {
		p("Admin ω (per residual branch):")
		for _, o := range r.Omega {
			p("  %-40s mean %.6f  min %.6f  max %.6f", o.Name, o.Mean, o.Min, o.Max)
		}
	}
	if r.Progress != nil {
		t := r.Progress
		line := fmt.Sprintf("training: epoch %d (+%d batches), %d updates", t.Epoch, t.IterationsInEpoch, t.Updates)
		if t.LR != nil {
			line += fmt.Sprintf(", lr %.6g", *t.LR)
		}
		if t.LossScale != nil {
			line += fmt.Sprintf(", loss scale %g", *t.LossScale)
		}
		if t.ValLoss != nil {
			line += fmt.Sprintf(", valid loss %.4f", *t.ValLoss)
		}
		if t.BestLoss != nil {
			line += fmt.Sprintf(", best %.4f", *t.BestLoss)
		}
		p("%s", line)
		opt := "absent"
		if r.Optimizer {
			opt = "present"
			if t.OptimizerName != "" {
				opt += " (" + t.OptimizerName + ")"
			}
		}
		p("optimizer state: %s", opt)
	}
	if r.SrcDict != "" || r.TgtDict != "" || r.Profile != "" {
		p("beside it: %s", strings.Join(nonEmpty(r.SrcDict, r.TgtDict, r.Profile), ", "))
	}
	if len(r.Globals) > 0 {
		p("pickle globals: %s", strings.Join(r.Globals, ", "))
	}
	if len(r.Unknown) > 0 {
		p("unknown globals (kept as inert data, nothing was executed): %s", strings.Join(r.Unknown, ", "))
	}
	if showState {
		p("state dict (%d entries):", len(r.State))
		for _, s := range r.State {
			p("  %-60s %-5s %v", s.Name, s.DType, s.Shape)
		}
	}
}

func nonEmpty(ss ...string) []string {
	var out []string
	for _, s := range ss {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}

func commas(n int64) string {
	s := fmt.Sprint(n)
	if n < 0 {
		return "-" + commas(-n)
	}
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
