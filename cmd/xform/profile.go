package main

import (
	"bytes"
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/xform-dev/xform/convert"
	"github.com/xform-dev/xform/fairseqpt"
	"github.com/xform-dev/xform/kernels/cpu"
	"github.com/xform-dev/xform/model"
	"github.com/xform-dev/xform/train"
)

func newProfileCmd() *cobra.Command {
	var f trainFlags
	var output string
	var force bool
	c := &cobra.Command{
		Use:   "profile DATA-BIN -o profile.ratio.init",
		Short: "Admin profiling: ω per residual branch from one training forward, as --init-type adaptive-profiling",
		Long: `Run the Clinic fork's adaptive-profiling stage: build the model with every ω = 1, run the
training forward of the first batch of epoch 1 (seeded order, --max-tokens batching) and set
each sub-layer's ω to sqrt of the accumulated variances (clinic-spec §1.4). Writes the
profile.ratio.init file the fork reads with --init-type adaptive.

Weights come from --restore-file (an Admin or Post-LN checkpoint; its ω are reset to 1) or
a fresh default initialisation. Dropout defaults to the architecture's as in the fork;
with --dropout 0 the result equals the fork's up to float rounding (the fork's dropout masks
come from torch's generator and cannot be reproduced).`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runProfile(cmd.Context(), args[0], &f, output, force, cmd.OutOrStdout())
		},
	}
	f.register(c, false)
	c.Flags().StringVarP(&output, "output", "o", "profile.ratio.init", "profile file to write")
	c.Flags().BoolVar(&force, "force", false, "replace an existing output file")
	c.Flags().Lookup("restore-file").DefValue = ""
	f.restoreFile = ""
	return c
}

func runProfile(ctx context.Context, dir string, f *trainFlags, output string, force bool, out io.Writer) error {
	if f.maxTokens <= 0 && f.maxSentences <= 0 {
		return usageError{fmt.Errorf("set --max-tokens or --max-sentences")}
	}
	f.validSubset = "valid"
	d, err := loadData(dir, f, false)
	if err != nil {
		return err
	}
	var m *model.Model
	drops := [3]float64{}
	if f.restoreFile != "" {
		im, err := convert.Import(f.restoreFile)
		if err != nil {
			return err
		}
		defer im.Close()
		m = im.Model
		if err := checkDicts(d, m, im); err != nil {
			return err
		}
		drops = [3]float64{m.Config.Dropout, m.Config.AttentionDropout, m.Config.ActivationDropout}
	} else {
		c, dr, err := newConfig(f, d, model.InitAdaptiveProfiling)
		if err != nil {
			return err
		}
		drops = dr
		if m, err = train.InitModel(c, uint64(f.seed)); err != nil {
			return err
		}
	}
	for i, v := range []float64{f.dropout, f.attnDropout, f.actDropout} {
		if v >= 0 {
			drops[i] = v
		}
	}
	bcfg := train.BatchConfig{MaxTokens: f.maxTokens, MaxSentences: f.maxSentences, Multiple: f.mult, Seed: uint32(f.seed),
		MaxSourcePos: m.Config.MaxSourcePositions, MaxTargetPos: m.Config.MaxTargetPositions, SkipInvalidAll: true}
	batches, _, err := train.Batches(d.Train, bcfg)
	if err != nil {
		return err
	}
	first, _ := train.Collate(train.EpochOrder(batches, bcfg.Seed, 1)[0], d.Train)
	p, err := train.Profile(ctx, m, cpu.New(f.threads), first, train.ProfileConfig{Dropout: drops[0], AttentionDropout: drops[1],
		ActivationDropout: drops[2], Seed: uint64(f.seed)})
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	if err := p.Write(&buf); err != nil {
		return err
	}
	if err := fairseqpt.AtomicWriteFile(output, force, func(w io.Writer) error { _, err := w.Write(buf.Bytes()); return err }); err != nil {
		return err
	}
	fmt.Fprintf(out, "| profiled %d encoder and %d decoder branches on the first batch (%d sentences, dropout %g) -> %s\n",
		len(p.Encoder), len(p.Decoder), first.B, drops[0], output)
	return nil
}
