package main

import (
	"errors"
	"os"

	"github.com/spf13/cobra"
	"github.com/xform-dev/xform/preprocess"
	"github.com/xform-dev/xform/train/data"
)

func newPreprocessCmd() *cobra.Command {
	o := preprocess.Defaults()
	var impl string
	var noProgress bool
	cmd := &cobra.Command{
		Use:   "preprocess --source-lang S --target-lang T --trainpref P [--validpref P] [--testpref P] --destdir DIR",
		Short: "Build dictionaries and binarize a parallel corpus into a fairseq data-bin",
		Long: `Preprocess does what fairseq 0.8's preprocess.py (fairseq-preprocess) does, with the
same flags and defaults, and writes the same bytes: dict.<lang>.txt and, per split and
language, <split>.<S>-<T>.<lang>.bin/.idx (or a text copy with --dataset-impl raw).

Input files are <prefix>.<lang>, one sentence per line, tokens separated by whitespace
(already tokenized/BPE'd). Every line gets an end-of-sentence token. Dictionaries count
tokens in the train files, order them by count (ties alphabetically), apply
--thresholdsrc/--nwordssrc, and pad with madeupwordNNNN to a multiple of --padding-factor.
--validpref and --testpref take comma-separated prefixes (valid, valid1, ...).

Where xform differs from fairseq:
  * inputs are checked first: a missing file, source/target files of a split whose line
    counts differ, or text that is not UTF-8 (file and line given) stop the run;
  * nothing appears in --destdir until all files are complete (they are written to a
    temporary directory beside it and renamed into place);
  * a dict.<lang>.txt already in --destdir is kept when identical, and is an error when
    it differs, unless --force (fairseq refuses any existing one, or overwrites it
    silently with --srcdict/--tgtdict);
  * --workers splits every file into chunks encoded in parallel; the output is the same
    for any number of workers.`,
		Example: `  xform preprocess --source-lang de --target-lang en \
      --trainpref corpus/train --validpref corpus/valid --testpref corpus/test \
      --destdir data-bin/iwslt14.de-en --joined-dictionary --workers 8

  # reuse an existing dictionary for a new test set
  xform preprocess -s de -t en --testpref corpus/test2 --destdir data-bin/test2 \
      --srcdict data-bin/iwslt14.de-en/dict.de.txt --tgtdict data-bin/iwslt14.de-en/dict.en.txt`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError{errors.New("preprocess takes no positional arguments (use --trainpref/--validpref/--testpref)")}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			i, err := data.ParseImpl(impl)
			if err != nil {
				return usageError{err}
			}
			o.DatasetImpl = i
			o.Log = cmd.OutOrStdout()
			if !noProgress {
				if f, ok := cmd.ErrOrStderr().(*os.File); ok && isTerminal(f) {
					o.Progress = f
				}
			}
			err = preprocess.Run(cmd.Context(), o)
			if errors.Is(err, preprocess.ErrUsage) {
				return usageError{err}
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.SourceLang, "source-lang", "s", "", "source language (file suffix)")
	f.StringVarP(&o.TargetLang, "target-lang", "t", "", "target language (file suffix)")
	f.StringVar(&o.TrainPref, "trainpref", "", "train file prefix")
	f.StringVar(&o.ValidPref, "validpref", "", "comma-separated valid file prefixes")
	f.StringVar(&o.TestPref, "testpref", "", "comma-separated test file prefixes")
	f.StringVar(&o.DestDir, "destdir", o.DestDir, "destination directory")
	f.IntVar(&o.ThresholdSrc, "thresholdsrc", 0, "map source words seen fewer than N times to <unk>")
	f.IntVar(&o.ThresholdTgt, "thresholdtgt", 0, "map target words seen fewer than N times to <unk>")
	f.StringVar(&o.SrcDict, "srcdict", "", "reuse this source dictionary")
	f.StringVar(&o.TgtDict, "tgtdict", "", "reuse this target dictionary")
	f.IntVar(&o.NWordsSrc, "nwordssrc", -1, "number of source symbols to keep, the 4 specials included (-1: all)")
	f.IntVar(&o.NWordsTgt, "nwordstgt", -1, "number of target symbols to keep, the 4 specials included (-1: all)")
	f.StringVar(&impl, "dataset-impl", string(data.ImplMMap), "output format: mmap, cached, lazy or raw")
	f.BoolVar(&o.JoinedDictionary, "joined-dictionary", false, "build one dictionary from both languages")
	f.BoolVar(&o.OnlySource, "only-source", false, "only process the source language")
	f.IntVar(&o.PaddingFactor, "padding-factor", o.PaddingFactor, "pad the dictionary size to a multiple of N")
	f.IntVar(&o.Workers, "workers", o.Workers, "parallel workers (the output does not depend on it)")
	f.BoolVar(&o.Force, "force", false, "overwrite differing dictionaries already in --destdir")
	f.BoolVar(&noProgress, "no-progress-bar", false, "never draw the progress bar (it is only drawn on a terminal)")
	return cmd
}

// isTerminal reports whether f is a character device, which is how a
// terminal looks without pulling in a terminal library.
func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
