package main

import (
	"fmt"
	"image/png"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/xform-dev/xform/convert"
	"github.com/xform-dev/xform/fairseqpt"
	"github.com/xform-dev/xform/internal/plot"
)

func newPlotCmd() *cobra.Command {
	var out string
	var ckpts []string
	var width, height int
	c := &cobra.Command{
		Use:   "plot LOG [CHECKPOINT...]",
		Short: "Draw training curves from a fairseq/xform training log (and Admin ω over checkpoints) as PNG",
		Long: `Plot reads the progress lines of a fairseq-train or xform train log (--log-format
simple or json, fairseq 0.8 to 0.12) and draws the training loss, validation loss and
learning rate over updates. With checkpoints (--checkpoints or further arguments), it adds
a panel with the mean of each Admin ω vector at each checkpoint's update count.`,
		Example: `  xform plot train.log -o curves.png
  xform plot train.log --checkpoints 'ckpt/checkpoint*.pt' -o curves.png
  xform plot train.log ckpt/checkpoint*.pt -o curves.png`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 1 {
				return usageError{fmt.Errorf("want a log file")}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				return usageError{fmt.Errorf("set the output file with -o")}
			}
			files, err := expandCheckpoints(append(ckpts, args[1:]...))
			if err != nil {
				return err
			}
			return runPlot(args[0], files, out, width, height, cmd.OutOrStdout())
		},
	}
	c.Flags().StringVarP(&out, "output", "o", "", "PNG file to write")
	c.Flags().StringSliceVar(&ckpts, "checkpoints", nil, "checkpoints (files or glob patterns, comma-separated) whose Admin ω to plot")
	c.Flags().IntVar(&width, "width", 1000, "image width in pixels")
	c.Flags().IntVar(&height, "panel-height", 320, "height of each panel in pixels")
	return c
}

// expandCheckpoints expands glob patterns (quoted on the command line) into files.
func expandCheckpoints(in []string) ([]string, error) {
	var out []string
	for _, p := range in {
		if !strings.ContainsAny(p, "*?[") {
			out = append(out, p)
			continue
		}
		m, err := filepath.Glob(p)
		if err != nil {
			return nil, usageError{fmt.Errorf("--checkpoints %q: %v", p, err)}
		}
		if len(m) == 0 {
			return nil, fmt.Errorf("no checkpoint matches %q", p)
		}
		out = append(out, m...)
	}
	return out, nil
}

func runPlot(logPath string, ckpts []string, out string, width, height int, w io.Writer) error {
	if width < 300 || height < 150 {
		return usageError{fmt.Errorf("--width must be ≥300 and --panel-height ≥150")}
	}
	f, err := os.Open(logPath)
	if err != nil {
		return err
	}
	lg, err := plot.ParseLog(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("%s: %w", logPath, err)
	}
	var extra []plot.Panel
	if len(ckpts) > 0 {
		p, err := omegaPanel(ckpts, w)
		if err != nil {
			return err
		}
		extra = append(extra, p)
	}
	img := plot.Render(plot.Figure(lg, extra...), width, height)
	err = fairseqpt.AtomicWriteFile(out, true, func(fw io.Writer) error { return png.Encode(fw, img) })
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "%s: %d train, %d valid, %d lr points", out, len(lg.Train()), len(lg.Valid), len(lg.LR))
	if len(ckpts) > 0 {
		fmt.Fprintf(w, ", ω of %d checkpoints", len(ckpts))
	}
	fmt.Fprintln(w)
	return nil
}

// omegaPanel reads each checkpoint's ω summary (convert.Inspect reads only the ω
// tensors' data) and makes one line per ω vector: its mean at each checkpoint's update.
func omegaPanel(paths []string, w io.Writer) (plot.Panel, error) {
	type ck struct {
		updates int
		omega   []convert.OmegaStat
	}
	var cks []ck
	seen := map[int]bool{}
	for i, p := range paths {
		r, err := convert.Inspect(p)
		if err != nil {
			return plot.Panel{}, err
		}
		if len(r.Omega) == 0 {
			fmt.Fprintf(w, "%s: no Admin ω, skipped\n", p)
			continue
		}
		u := i
		if r.Progress != nil && r.Progress.Updates > 0 {
			u = r.Progress.Updates
		}
		if seen[u] { // checkpoint_best.pt / checkpoint_last.pt copies of another file
			continue
		}
		seen[u] = true
		cks = append(cks, ck{u, r.Omega})
	}
	if len(cks) == 0 {
		return plot.Panel{}, fmt.Errorf("none of the %d checkpoints has Admin ω", len(paths))
	}
	sort.Slice(cks, func(i, j int) bool { return cks[i].updates < cks[j].updates })
	var series []plot.Series
	index := map[string]int{}
	for _, c := range cks {
		for _, o := range c.omega {
			k, ok := index[o.Name]
			if !ok {
				k = len(series)
				index[o.Name] = k
				series = append(series, plot.Series{Name: omegaLabel(o.Name), Color: plot.Palette[k%len(plot.Palette)], Label: true})
			}
			series[k].Points = append(series[k].Points, plot.Point{Update: c.updates, Value: o.Mean})
		}
	}
	return plot.Panel{Title: fmt.Sprintf("Admin omega (mean per sub-layer) over %d checkpoints", len(cks)), Series: series}, nil
}

// omegaLabel shortens encoder.layers.2.self_attn_omega to E2 SA (FF: ffn, EA: encoder
// attention).
func omegaLabel(name string) string {
	side := "E"
	if strings.HasPrefix(name, "decoder.") {
		side = "D"
	}
	parts := strings.Split(name, ".")
	if len(parts) < 4 {
		return name
	}
	kind := map[string]string{"self_attn_omega": "SA", "encoder_attn_omega": "EA", "ffn_omega": "FF"}[parts[3]]
	return side + parts[2] + " " + kind
}
