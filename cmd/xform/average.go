package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"github.com/xform-dev/xform/fairseqpt"
)

func newAverageCmd() *cobra.Command {
	var out string
	var epochs, updates, upper int
	var force bool
	cmd := &cobra.Command{
		Use:   "average CKPT... -o OUT.pt | average DIR --num-epoch-checkpoints K -o OUT.pt",
		Short: "Average fairseq checkpoints (fairseq's average_checkpoints.py)",
		Long: `Average writes the mean of the checkpoints' model parameters, as fairseq's
scripts/average_checkpoints.py does: every entry widened to float32 (fp16 too), summed in
the order given, divided by the count; the output is float32. Every other entry (args,
optimizer state, training progress) is copied from the first checkpoint given, which is
the newest when --num-epoch-checkpoints / --num-update-checkpoints pick them from a
directory (checkpoint<N>.pt / checkpoint_<E>_<N>.pt, highest N first, N ≤
--checkpoint-upper-bound). Tied parameters come out as separate tensors, as fairseq's do.
The output is written atomically; an existing file is an error unless --force.`,
		Example: `  xform average ckpt/checkpoint38.pt ckpt/checkpoint39.pt -o avg.pt
  xform average ckpt/ --num-epoch-checkpoints 5 -o avg5.pt
  xform average ckpt/ --num-update-checkpoints 3 --checkpoint-upper-bound 900 -o avg.pt`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 1 {
				return usageError{fmt.Errorf("average: give checkpoints, or one directory with --num-epoch-checkpoints/--num-update-checkpoints")}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				return usageError{fmt.Errorf("average: -o OUT.pt is required")}
			}
			if epochs > 0 && updates > 0 {
				return usageError{fmt.Errorf("average: --num-epoch-checkpoints and --num-update-checkpoints are exclusive")}
			}
			inputs := args
			if n := max(epochs, updates); n > 0 {
				if len(args) != 1 {
					return usageError{fmt.Errorf("average: --num-*-checkpoints takes one directory, got %d arguments", len(args))}
				}
				var err error
				if inputs, err = fairseqpt.LastCheckpoints(args[0], n, updates > 0, upper); err != nil {
					return err
				}
			}
			if !force {
				if _, err := os.Lstat(out); err == nil {
					return fmt.Errorf("average: %s: %w", out, fairseqpt.ErrExists)
				}
			}
			av, err := fairseqpt.Average(inputs)
			if err != nil {
				return err
			}
			defer av.Close()
			if err := fairseqpt.WriteFile(out, av.Root, fairseqpt.WriteOptions{Force: force}); err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "averaged %d checkpoints (other entries from %s):\n", len(inputs), inputs[0])
			for _, p := range inputs {
				fmt.Fprintln(w, "  "+p)
			}
			fmt.Fprintln(w, "wrote", out)
			return nil
		},
	}
	cmd.Flags().StringVarP(&out, "output", "o", "", "output checkpoint (required)")
	cmd.Flags().IntVar(&epochs, "num-epoch-checkpoints", 0, "average the last K checkpoint<epoch>.pt of the directory")
	cmd.Flags().IntVar(&updates, "num-update-checkpoints", 0, "average the last K checkpoint_<epoch>_<update>.pt of the directory")
	cmd.Flags().IntVar(&upper, "checkpoint-upper-bound", -1, "with --num-*-checkpoints: ignore checkpoints numbered above this")
	cmd.Flags().BoolVar(&force, "force", false, "replace an existing output file")
	return cmd
}
