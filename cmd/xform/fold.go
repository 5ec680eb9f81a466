package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"path/filepath"

	"github.com/spf13/cobra"
	"github.com/xform-dev/xform/admin"
	"github.com/xform-dev/xform/convert"
	"github.com/xform-dev/xform/generate"
	"github.com/xform-dev/xform/kernels/cpu"
	"github.com/xform-dev/xform/model"
)

// foldFlags are the flags `xform fold` and `xform export --fairseq --fold` share.
type foldFlags struct {
	keepArchitecture bool
	minOmega         float64
	data             string
	subset           string
	maxSentences     int
	threads          int
	jsonOut          bool
}

func (f *foldFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.BoolVar(&f.keepArchitecture, "keep-architecture", false, "keep shared embeddings and sinusoidal positions; the first sub-layer of each stack is then approximate (the report shows the error)")
	fl.Float64Var(&f.minOmega, "min-omega", admin.DefaultMinOmega, "refuse to fold when some |ω| is below this")
	fl.StringVar(&f.data, "data", "", "data-bin directory whose --subset the report runs on (default: random token batches)")
	fl.StringVar(&f.subset, "subset", "test", "data-bin subset for the report")
	fl.IntVar(&f.maxSentences, "max-sentences", 64, "sentences the report runs on (0: the whole subset)")
	fl.IntVar(&f.threads, "threads", 0, "CPU threads for the report (0: all)")
	fl.BoolVar(&f.jsonOut, "json", false, "print the report as JSON")
}

func newFoldCmd() *cobra.Command {
	var f foldFlags
	var out, target string
	var force, weightsOnly, dropOptimizer bool
	cmd := &cobra.Command{
		Use:   "fold CKPT -o OUT.pt",
		Short: "Fold Admin's ω into plain Post-LN weights and write a fairseq checkpoint",
		Long: `Fold turns an Admin model, LN(f(x) + ω⊙x), into an ordinary Post-LN Transformer,
LN(x + f(x)), with the same outputs: each LayerNorm that feeds a residual is scaled by
that residual's ω (γ and β), and the projections reading that state (self-attention
q/k/v, encoder-attention q, fc1) have their input columns divided by ω.

The first sub-layer of each stack reads the embeddings, which have no LayerNorm to
scale. By default they absorb ω exactly, which changes the architecture where ω ≠ 1
there: shared embeddings become separate tables (the output projection keeps the
original one) and sinusoidal positions become a learned table. The changes are
printed. --keep-architecture keeps sharing and sinusoids instead and approximates
that sub-layer; the report shows what it costs.

The report runs the original and the folded model (teacher forcing) on --data's
--subset (or on random batches) and prints max |Δ| of every layer's output and of
the final log-probs. The checkpoint is written as export --fairseq writes it
(--target, default clinic: it loads in the Clinic fork with --init-type default and
in fairseq 0.9-0.12). The optimizer state is dropped (it belongs to the unfolded
parameters); training progress is kept. Nothing is written on error.`,
		Example: `  xform fold run/ckpt/checkpoint_best.pt -o folded.pt --data data-bin
  xform fold checkpoint_last.pt -o folded_012.pt --target fairseq-0.12
  xform fold checkpoint_last.pt -o same_arch.pt --keep-architecture --data data-bin`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				return usageError{fmt.Errorf("fold: -o OUT.pt is required")}
			}
			t, err := convert.ParseFairseqTarget(target)
			if err != nil {
				return usageError{err}
			}
			return runExportFairseq(cmd, args[0], exportFairseqOptions{Out: out, Target: t, Fold: true, Force: force,
				WeightsOnly: weightsOnly, DropOptimizer: dropOptimizer, fold: f})
		},
	}
	cmd.Flags().StringVarP(&out, "output", "o", "", "output checkpoint (required)")
	cmd.Flags().StringVar(&target, "target", string(convert.TargetClinic), "checkpoint layout: clinic, fairseq-0.10 or fairseq-0.12")
	cmd.Flags().BoolVar(&force, "force", false, "replace an existing output file")
	cmd.Flags().BoolVar(&weightsOnly, "weights-only", false, `write {"model": state dict} only (torch.load weights_only=True)`)
	cmd.Flags().BoolVar(&dropOptimizer, "drop-optimizer", false, "omit the optimizer state (a fold always drops it)")
	f.register(cmd)
	return cmd
}

// foldAndReport folds im's model and prints the change list and the per-layer report.
func foldAndReport(cmd *cobra.Command, im *convert.Imported, f foldFlags) (*admin.FoldResult, error) {
	res, err := admin.Fold(im.Model, admin.FoldOptions{KeepArchitecture: f.keepArchitecture, MinOmega: f.minOmega})
	if err != nil {
		return nil, err
	}
	batches, what, err := reportBatches(im, f)
	if err != nil {
		return nil, err
	}
	rep, err := admin.CompareFold(cmd.Context(), im.Model, res, batches, cpu.New(f.threads))
	if err != nil {
		return nil, err
	}
	w := cmd.OutOrStdout()
	if f.jsonOut {
		enc := json.NewEncoder(w)
		enc.SetIndent("", " ")
		return res, enc.Encode(map[string]interface{}{"changes": res.Changes, "approximations": res.Approximations,
			"data": what, "report": rep})
	}
	printFoldReport(w, res, rep, what)
	return res, nil
}

func printFoldReport(w io.Writer, res *admin.FoldResult, rep *admin.FoldReport, what string) {
	fmt.Fprintln(w, "fold: ω folded into LayerNorm γ/β and the input columns of q/k/v, encoder-attention q and fc1")
	if len(res.Changes) == 0 && len(res.Approximations) == 0 {
		fmt.Fprintln(w, "architecture: unchanged (Post-LN, init default)")
	}
	for _, c := range res.Changes {
		fmt.Fprintln(w, "architecture:", c)
	}
	for _, a := range res.Approximations {
		fmt.Fprintln(w, "approximate:", a)
	}
	fmt.Fprintf(w, "report on %s (%d sentences, %d target tokens), folded vs original:\n", what, rep.Sentences, rep.Tokens)
	fmt.Fprintf(w, "  %-30s %12s %12s %12s\n", "output of", "max |Δ|", "max rel", "max |ref|")
	for _, d := range append(rep.Layers, rep.LogProbs) {
		fmt.Fprintf(w, "  %-30s %12.3g %12.3g %12.4g\n", d.Name, d.MaxAbs, d.MaxRel, d.MaxRef)
	}
}

// reportBatches reads the first --max-sentences sentences of --data's --subset, or makes
// random ones when no data-bin is given.
func reportBatches(im *convert.Imported, f foldFlags) ([]admin.Batch, string, error) {
	c := im.Model.Config
	if f.data == "" {
		return randomReportBatches(c, 64), "64 random sentences", nil
	}
	src, tgt, err := generate.InferLangs(f.data, f.subset)
	if err != nil {
		return nil, "", err
	}
	sp, err := generate.LoadSplit(f.data, f.subset, src, tgt)
	if err != nil {
		return nil, "", err
	}
	if sp.Tgt == nil {
		return nil, "", fmt.Errorf("fold: %s: subset %s has no target side to run the decoder on", f.data, f.subset)
	}
	n := len(sp.Src)
	if f.maxSentences > 0 && f.maxSentences < n {
		n = f.maxSentences
	}
	var out []admin.Batch
	for start := 0; start < n; start += 16 {
		var ids []int
		for i := start; i < min(n, start+16); i++ {
			ids = append(ids, i)
		}
		order, tokens, S := generate.Collate(ids, sp.Src)
		T := 0
		for _, id := range order {
			T = max(T, len(sp.Tgt[id]))
		}
		prev := make([]int32, len(order)*T)
		for b, id := range order {
			row := prev[b*T : (b+1)*T]
			for j := range row {
				row[j] = model.Pad
			}
			row[0] = model.EOS
			copy(row[1:], sp.Tgt[id][:max(0, len(sp.Tgt[id])-1)])
		}
		for _, x := range append(append([]int32(nil), tokens...), prev...) {
			if int(x) >= min(c.SrcVocab, c.TgtVocab) {
				return nil, "", fmt.Errorf("fold: %s: token id %d is outside the model's vocabulary", f.data, x)
			}
		}
		out = append(out, admin.Batch{B: len(order), S: S, T: T, Src: tokens, Prev: prev})
	}
	return out, fmt.Sprintf("%s/%s", filepath.Clean(f.data), f.subset), nil
}

func randomReportBatches(c model.Config, n int) []admin.Batch {
	rng := rand.New(rand.NewSource(1))
	var out []admin.Batch
	V := min(c.SrcVocab, c.TgtVocab)
	for k := 0; k < n; k += 16 {
		B, S, T := 16, 24, 24
		b := admin.Batch{B: B, S: S, T: T, Src: make([]int32, B*S), Prev: make([]int32, B*T)}
		for i := 0; i < B; i++ {
			sl, tl := 4+rng.Intn(S-4), 4+rng.Intn(T-4)
			for j := 0; j < S; j++ {
				b.Src[i*S+j] = model.Pad
				if j >= S-sl {
					b.Src[i*S+j] = int32(4 + rng.Intn(V-4))
				}
			}
			b.Src[i*S+S-1] = model.EOS
			for j := 0; j < T; j++ {
				b.Prev[i*T+j] = model.Pad
				if j < tl {
					b.Prev[i*T+j] = int32(4 + rng.Intn(V-4))
				}
			}
			b.Prev[i*T] = model.EOS
		}
		out = append(out, b)
	}
	return out
}
