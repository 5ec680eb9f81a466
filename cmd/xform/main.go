// Command xform moves fairseq / Admin Transformer models between PyTorch checkpoints,
// its own Go engine and ONNX, and trains them.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"

	"github.com/spf13/cobra"
)

// Exit codes: 0 ok, 1 the work failed (bad input, I/O), 2 usage error, 130 interrupted.
const (
	exitFailure     = 1
	exitUsage       = 2
	exitInterrupted = 130
)

type usageError struct{ error }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	root := newRootCmd()
	err := root.ExecuteContext(ctx)
	if err == nil {
		return
	}
	fmt.Fprintln(os.Stderr, "xform:", err)
	os.Exit(exitCode(err))
}

// exitCode maps an error to the process exit status.
func exitCode(err error) int {
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue):
		return exitUsage
	case errors.Is(err, context.Canceled):
		return exitInterrupted
	}
	return exitFailure
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "xform",
		Short: "Move fairseq and Admin Transformer models between PyTorch, Go and ONNX, and train them",
		Long: `xform reads fairseq / Transformer-Clinic (Admin) checkpoints without Python,
runs them exactly as the reference does, folds Admin's ω into plain weights,
exports fairseq and ONNX files, and trains Admin models.`,
		Example: `  xform demo                                          # the whole tool on a small embedded Admin model
  xform inspect checkpoint_last.pt                    # what is inside a checkpoint
  xform import checkpoint_last.pt -o model/           # config.json + model.safetensors
  xform generate data-bin --path model/ --beam 4      # fairseq-generate, same hypotheses
  xform preprocess -s de -t en --trainpref train --validpref valid --destdir data-bin --joined-dictionary
  xform train data-bin --arch transformer_wmt_en_de --share-all-embeddings --init adaptive --save-dir ckpt
  xform fold checkpoint_best.pt -o plain.pt           # Admin ω folded into an ordinary Post-LN model
  xform export --onnx checkpoint_best.pt -o onnx/     # ONNX Runtime graphs (optimum layout)
  xform env                                           # which GPU and CUDA libraries xform finds`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(
		newInspectCmd(),
		newImportCmd(),
		newDemoCmd(),
		newPreprocessCmd(),
		newExportCmd(),
		newGenerateCmd(),
		newTranslateCmd(),
		newScoreCmd(),
		newFoldCmd(),
		newAverageCmd(),
		newEnvCmd(),
		newTrainCmd(),
		newProfileCmd(),
		newPlotCmd(),
		newBenchCmd(),
	)
	return root
}

// exactArgs is cobra.ExactArgs with a usage error, so a wrong argument count exits 2.
func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := cobra.ExactArgs(n)(cmd, args); err != nil {
			return usageError{err}
		}
		return nil
	}
}
