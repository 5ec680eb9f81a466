package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/xform-dev/xform/convert"
	"github.com/xform-dev/xform/generate"
	"github.com/xform-dev/xform/kernels/cpu"
	"github.com/xform-dev/xform/model"
	"github.com/xform-dev/xform/onnxrun"
)

// genFlags are the fairseq-generate flags shared by generate and translate.
type genFlags struct {
	path, subset, srcLang, tgtLang, removeBPE string
	beam, maxLenB, minLen, nbest              int
	batchSize, maxTokens, threads, seed       int
	maxLenA, lenpen, unkpen                   float64
	quiet, fastLinear                         bool
	device                                    deviceFlag
	onnx, onnxLib                             string
}

func (g *genFlags) register(c *cobra.Command, withSubset bool) {
	f := c.Flags()
	g.device.register(c)
	f.StringVar(&g.path, "path", "", "checkpoint (.pt, a directory holding one, or an xform model directory)")
	if withSubset {
		f.StringVar(&g.subset, "gen-subset", "test", "data split to translate")
	}
	f.StringVarP(&g.srcLang, "source-lang", "s", "", "source language (inferred from the data-bin file names)")
	f.StringVarP(&g.tgtLang, "target-lang", "t", "", "target language (inferred from the data-bin file names)")
	f.IntVar(&g.beam, "beam", 5, "beam size")
	f.Float64Var(&g.maxLenA, "max-len-a", 0, "max length = a·(padded source width) + b")
	f.IntVar(&g.maxLenB, "max-len-b", 200, "max length = a·(padded source width) + b")
	f.IntVar(&g.minLen, "min-len", 1, "minimum generation length (EOS forbidden before)")
	f.Float64Var(&g.lenpen, "lenpen", 1, "length penalty: score = Σ log p / len^lenpen")
	f.Float64Var(&g.unkpen, "unkpen", 0, "unknown-word penalty subtracted from log p(<unk>)")
	f.IntVar(&g.nbest, "nbest", 1, "hypotheses to output per sentence")
	f.IntVar(&g.batchSize, "batch-size", 0, "max sentences per batch (fairseq's --max-sentences)")
	f.IntVar(&g.maxTokens, "max-tokens", 0, "max tokens per batch (12000 when neither limit is given, as fairseq)")
	f.IntVar(&g.seed, "seed", 1, "seed of the order of equal-length sentences (fairseq's --seed)")
	f.StringVar(&g.removeBPE, "remove-bpe", "", "remove BPE continuation markers (bare flag: '@@ ')")
	f.Lookup("remove-bpe").NoOptDefVal = "@@ "
	f.BoolVar(&g.quiet, "quiet", false, "print only the summary lines")
	f.IntVar(&g.threads, "threads", 0, "CPU goroutines per operation (0 = GOMAXPROCS)")
	f.BoolVar(&g.fastLinear, "fast-linear", false, "no-op, kept for old command lines: Linear always uses the float32 GEMM with float64 chunk sums now (parity-tested)")
	f.IntVar(new(int), "required-batch-size-multiple", 8, "batch sizes are kept a multiple of this (fairseq's default)")
}

func (g *genFlags) options() generate.Options {
	s := model.BeamOptions{Beam: g.beam, MaxLenA: g.maxLenA, MaxLenB: g.maxLenB, MinLen: g.minLen,
		LenPenalty: g.lenpen, UnkPenalty: g.unkpen, NBest: g.nbest, Workers: g.threads}
	return generate.Options{Subset: g.subset, Search: s, BatchSize: g.batchSize, MaxTokens: g.maxTokens,
		RequiredBatchSizeMultiple: 8, Seed: uint32(g.seed), RemoveBPE: g.removeBPE, Quiet: g.quiet}
}

// runner loads --path and builds the model on the chosen device.
func (g *genFlags) runner() (*model.Runner, error) {
	m, err := convert.LoadCheckpoint(g.path)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", g.path, err)
	}
	var opts []cpu.Option
	if g.fastLinear {
		opts = append(opts, cpu.WithFloat32Linear())
	}
	be, err := g.device.backend(g.threads, opts...)
	if err != nil {
		return nil, err
	}
	return model.NewRunner(m, be)
}

// load reads the model and the data-bin dictionaries (and, for generate, the split).
func (g *genFlags) load(dataDir, subset string) (*model.Runner, *generate.Split, error) {
	if g.path == "" {
		return nil, nil, usageError{fmt.Errorf("--path is required")}
	}
	if g.beam < 1 || g.nbest < 1 || g.nbest > g.beam {
		return nil, nil, usageError{fmt.Errorf("need 1 ≤ --nbest ≤ --beam (got %d, %d)", g.nbest, g.beam)}
	}
	src, tgt := g.srcLang, g.tgtLang
	if src == "" || tgt == "" {
		s, t, err := generate.InferLangs(dataDir, subset)
		if err != nil {
			return nil, nil, err
		}
		src, tgt = s, t
	}
	sp, err := generate.LoadSplit(dataDir, subset, src, tgt)
	if err != nil {
		return nil, nil, err
	}
	r, err := g.runner()
	if err != nil {
		return nil, nil, err
	}
	if err := generate.CheckVocab(r, &generate.Split{SrcLang: src, TgtLang: tgt, SrcDict: sp.SrcDict, TgtDict: sp.TgtDict}); err != nil {
		return nil, nil, err
	}
	return r, sp, nil
}

func newGenerateCmd() *cobra.Command {
	var g genFlags
	c := &cobra.Command{
		Use:   "generate DATA-BIN --path CKPT",
		Short: "Translate a data-bin split with beam search, printing fairseq-generate's output",
		Long: `generate translates a preprocessed split exactly as fairseq-generate (0.8, the Clinic
fork) does: sentences ordered and batched the same way, beam search with the same
stopping rules and scores, S-/T-/H-/P- lines in the same order and format, then the
"| Translated" and BLEU4 lines. Flags keep fairseq's names and defaults.`,
		Example: `  xform generate data-bin --path ckpt/checkpoint_last.pt --beam 4 --batch-size 128
  xform generate data-bin --path model.pt --beam 5 --remove-bpe --quiet`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var r generate.Translator
			var sp *generate.Split
			var err error
			from := g.path
			if g.onnx != "" {
				var m *onnxrun.Model
				m, sp, err = g.loadONNX(args[0], g.subset)
				if m != nil {
					defer m.Close()
				}
				r, from = m, g.onnx
			} else {
				r, sp, err = g.load(args[0], g.subset)
			}
			if err != nil {
				return err
			}
			out := bufio.NewWriter(cmd.OutOrStdout())
			defer out.Flush()
			fmt.Fprintf(out, "| [%s] dictionary: %d types\n| [%s] dictionary: %d types\n", sp.SrcLang, sp.SrcDict.Len(), sp.TgtLang, sp.TgtDict.Len())
			fmt.Fprintf(out, "| %s %s %s-%s %d examples\n| loading model(s) from %s\n", args[0], g.subset, sp.SrcLang, sp.TgtLang, len(sp.Src), from)
			res, err := generate.Run(cmd.Context(), r, sp, g.options(), out, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			generate.Summary(out, res, g.subset, g.beam)
			return out.Flush()
		},
	}
	g.register(c, true)
	c.Flags().StringVar(&g.onnx, "onnx", "", "run the search on ONNX Runtime over a directory written by `xform export --onnx` (replaces --path; needs a build with -tags onnxruntime)")
	c.Flags().StringVar(&g.onnxLib, "onnxruntime-lib", "", "ONNX Runtime shared library for --onnx (default $XFORM_ONNXRUNTIME_LIB, else the onnxruntime Python wheel's)")
	return c
}

// loadONNX is load for --onnx: the split and dictionaries from the data-bin, the model
// from an exported ONNX directory.
func (g *genFlags) loadONNX(dataDir, subset string) (*onnxrun.Model, *generate.Split, error) {
	if g.path != "" {
		return nil, nil, usageError{fmt.Errorf("--onnx replaces --path: give one of them")}
	}
	if g.beam < 1 || g.nbest < 1 || g.nbest > g.beam {
		return nil, nil, usageError{fmt.Errorf("need 1 ≤ --nbest ≤ --beam (got %d, %d)", g.nbest, g.beam)}
	}
	m, err := onnxrun.Open(g.onnx, onnxrun.Options{Lib: g.onnxLib, Threads: g.threads})
	if err != nil {
		return nil, nil, err
	}
	src, tgt := g.srcLang, g.tgtLang
	if src == "" || tgt == "" {
		s, t, err := generate.InferLangs(dataDir, subset)
		if err != nil {
			return m, nil, err
		}
		src, tgt = s, t
	}
	sp, err := generate.LoadSplit(dataDir, subset, src, tgt)
	if err != nil {
		return m, nil, err
	}
	if err := generate.CheckVocab(m, sp); err != nil {
		return m, nil, err
	}
	return m, sp, nil
}

func newTranslateCmd() *cobra.Command {
	var g genFlags
	var bufferSize int
	c := &cobra.Command{
		Use:   "translate DATA-BIN --path CKPT < input",
		Short: "Translate (BPE'd, tokenized) lines from stdin like fairseq-interactive",
		Long: `translate reads one sentence per line from stdin, encodes it with the data-bin's
source dictionary and prints S-/H-/P- lines as fairseq-interactive does, in input
order. A progress count goes to stderr when stdout is not a terminal.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, sp, err := g.loadDicts(args[0])
			if err != nil {
				return err
			}
			opt := g.options()
			if opt.BatchSize == 0 && opt.MaxTokens == 0 {
				opt.BatchSize = 64
			}
			if bufferSize < 1 {
				return usageError{fmt.Errorf("translate: --buffer-size must be ≥1")}
			}
			out := bufio.NewWriter(cmd.OutOrStdout())
			defer out.Flush()
			var progress io.Writer
			if st, err := os.Stdout.Stat(); err == nil && st.Mode()&os.ModeCharDevice == 0 {
				progress = cmd.ErrOrStderr()
			}
			// Stream: translate --buffer-size lines at a time, so memory stays bounded and output
			// appears while input is still arriving (as fairseq-interactive's --buffer-size).
			sc := bufio.NewScanner(cmd.InOrStdin())
			sc.Buffer(make([]byte, 1<<20), 1<<26)
			first, eof := 0, false
			for !eof {
				split := &generate.Split{SrcLang: sp.SrcLang, TgtLang: sp.TgtLang, SrcDict: sp.SrcDict, TgtDict: sp.TgtDict}
				for len(split.Src) < bufferSize {
					if !sc.Scan() {
						eof = true
						break
					}
					ids, _ := sp.SrcDict.Encode(sc.Text(), true)
					split.Src = append(split.Src, ids)
				}
				if err := sc.Err(); err != nil {
					return fmt.Errorf("read stdin: %w", err)
				}
				if len(split.Src) == 0 {
					break
				}
				if _, err := generate.InteractiveFrom(cmd.Context(), r, split, first, opt, out, progress); err != nil {
					return err
				}
				first += len(split.Src)
				if err := out.Flush(); err != nil {
					return err
				}
			}
			if progress != nil && first > 0 {
				fmt.Fprintln(progress)
			}
			return nil
		},
	}
	g.register(c, false)
	c.Flags().IntVar(&bufferSize, "buffer-size", 512, "lines read and translated at a time (fairseq-interactive's --buffer-size; xform's default is larger for throughput)")
	return c
}

// loadDicts is load without a split: translate needs only the dictionaries.
func (g *genFlags) loadDicts(dataDir string) (*model.Runner, *generate.Split, error) {
	src, tgt := g.srcLang, g.tgtLang
	if src == "" || tgt == "" {
		for _, sub := range []string{"test", "valid", "train"} {
			if s, t, err := generate.InferLangs(dataDir, sub); err == nil {
				src, tgt = s, t
				break
			}
		}
		if src == "" {
			return nil, nil, usageError{fmt.Errorf("cannot infer languages in %s: pass --source-lang and --target-lang", dataDir)}
		}
	}
	g.srcLang, g.tgtLang = src, tgt
	sp, err := generate.LoadDicts(dataDir, src, tgt)
	if err != nil {
		return nil, nil, err
	}
	if g.path == "" {
		return nil, nil, usageError{fmt.Errorf("--path is required")}
	}
	r, err := g.runner()
	if err != nil {
		return nil, nil, err
	}
	if err := generate.CheckVocab(r, sp); err != nil {
		return nil, nil, err
	}
	return r, sp, nil
}

func newScoreCmd() *cobra.Command {
	var g genFlags
	var dump, ids string
	c := &cobra.Command{
		Use:   "score DATA-BIN --path CKPT --dump DIR",
		Short: "Run one teacher-forced batch and write encoder outputs and log-probs as .npy",
		Long: `score collates the given sentences of a split as fairseq does (left-padded sources
sorted by length, prev_output_tokens = EOS + target) and writes to DIR:
batch/{src_tokens,prev_output_tokens,id}.npy and encoder_out [S,B,C],
encoder_states [L,S,B,C], decoder_inner_states [L+1,T,B,C], decoder_features [B,T,C],
decoder_attn [B,T,S], logits and lprobs [B,T,V] — the layouts of the reference dumps.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if dump == "" {
				return usageError{fmt.Errorf("--dump is required")}
			}
			r, sp, err := g.load(args[0], g.subset)
			if err != nil {
				return err
			}
			if sp.Tgt == nil {
				return fmt.Errorf("split %s has no target side to score", g.subset)
			}
			var sel []int
			for _, s := range strings.Split(ids, ",") {
				i, err := strconv.Atoi(strings.TrimSpace(s))
				if err != nil || i < 0 || i >= len(sp.Src) {
					return usageError{fmt.Errorf("bad sentence id %q (split has %d)", s, len(sp.Src))}
				}
				sel = append(sel, i)
			}
			return generate.Dump(cmd.Context(), r, sp, sel, dump)
		},
	}
	g.register(c, true)
	c.Flags().StringVar(&dump, "dump", "", "output directory for the .npy files")
	c.Flags().StringVar(&ids, "ids", "0,1,2,3", "comma-separated sentence ids of the batch")
	return c
}
