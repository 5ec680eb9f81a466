package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"github.com/xform-dev/xform/admin"
	"github.com/xform-dev/xform/convert"
	"github.com/xform-dev/xform/fairseqpt"
	"github.com/xform-dev/xform/model"
)

// exportFairseqOptions are the settings of `xform export --fairseq` (and `xform fold`).
type exportFairseqOptions struct {
	Out           string
	Target        convert.FairseqTarget
	Fold          bool
	Force         bool
	WeightsOnly   bool
	DropOptimizer bool

	enabled bool   // --fairseq given
	target  string // raw --target
	fold    foldFlags
}

// addExportFairseqFlags registers export's --fairseq flags; -o and --force are export's own.
func addExportFairseqFlags(cmd *cobra.Command, o *exportFairseqOptions) {
	fl := cmd.Flags()
	fl.BoolVar(&o.enabled, "fairseq", false, "export a fairseq checkpoint (-o OUT.pt)")
	fl.StringVar(&o.target, "target", string(convert.TargetClinic), "fairseq: checkpoint layout: clinic (the Clinic fork, fairseq 0.8), fairseq-0.10, fairseq-0.12")
	fl.BoolVar(&o.Fold, "fold", false, "fairseq: fold Admin ω into plain weights first (see xform fold)")
	fl.BoolVar(&o.WeightsOnly, "weights-only", false, `fairseq: write {"model": state dict} only, which torch.load(weights_only=True) accepts`)
	fl.BoolVar(&o.DropOptimizer, "drop-optimizer", false, "fairseq: omit the optimizer state")
	o.fold.register(cmd)
}

// runExportFairseq writes ckpt's model as a fairseq checkpoint. Without Fold the model's
// parameters are written exactly as read (and a source of the target's own layout is
// re-emitted tensor for tensor); an Admin model for --target clinic also gets the
// profile.ratio.init the Clinic fork reads when it builds the model, beside the output.
func runExportFairseq(cmd *cobra.Command, ckpt string, opts exportFairseqOptions) error {
	if opts.Out == "" {
		return usageError{fmt.Errorf("export: -o OUT.pt is required")}
	}
	if opts.Target == "" {
		t, err := convert.ParseFairseqTarget(opts.target)
		if err != nil {
			return usageError{err}
		}
		opts.Target = t
	}
	if !opts.Force {
		if _, err := os.Lstat(opts.Out); err == nil {
			return fmt.Errorf("export: %s: %w", opts.Out, fairseqpt.ErrExists)
		}
	}
	im, err := convert.Import(ckpt)
	if err != nil {
		return err
	}
	defer im.Close()
	m := im.Model
	w := cmd.OutOrStdout()
	if opts.Fold {
		if !m.Config.Init.HasOmega() {
			return fmt.Errorf("fold: %s: %w (init type %q); nothing written", im.Source, admin.ErrNotAdmin, m.Config.Init)
		}
		res, err := foldAndReport(cmd, im, opts.fold)
		if err != nil {
			return fmt.Errorf("fold: %s: %w", im.Source, err)
		}
		m = res.Model
	}
	var src *fairseqpt.Checkpoint
	if im.Checkpoint != nil {
		src = im.Checkpoint
	}
	// The Clinic fork reads profile.ratio.init at model build: prepare it before writing
	// anything, so a conflict leaves no checkpoint behind.
	var profile []byte
	profilePath := filepath.Join(filepath.Dir(opts.Out), "profile.ratio.init")
	if m.Config.Init.HasOmega() && opts.Target == convert.TargetClinic && !opts.WeightsOnly {
		if profile, err = profileBytes(im, m); err != nil {
			return err
		}
		if old, err := os.ReadFile(profilePath); err == nil && !bytes.Equal(old, profile) && !opts.Force {
			return fmt.Errorf("export: %s exists with other values: %w", profilePath, fairseqpt.ErrExists)
		} else if err == nil && bytes.Equal(old, profile) {
			profile = nil // already there
		} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("export: %w", err)
		}
	}
	ex, err := convert.ExportFairseq(opts.Out, m, convert.FairseqExportOptions{Target: opts.Target, WeightsOnly: opts.WeightsOnly,
		DropOptimizer: opts.DropOptimizer, Source: src, Changed: opts.Fold}, opts.Force)
	if err != nil {
		return err
	}
	if profile != nil {
		err := fairseqpt.AtomicWriteFile(profilePath, true, func(pw io.Writer) error { _, err := pw.Write(profile); return err })
		if err != nil {
			os.Remove(opts.Out) // all or nothing: the fork cannot build the model without it
			return fmt.Errorf("export: %w", err)
		}
		fmt.Fprintf(w, "wrote %s (the Clinic fork reads it from the working directory when it builds an adaptive model)\n", profilePath)
	}
	for _, n := range ex.Notes {
		fmt.Fprintln(w, "note:", n)
	}
	st, err := os.Stat(opts.Out)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	c := m.Config
	fmt.Fprintf(w, "exported %s (%s, init %s, %d+%d layers) to %s: fairseq checkpoint, target %s, %s bytes\n",
		im.Source, c.Arch, c.Init, c.EncoderLayers, c.DecoderLayers, opts.Out, opts.Target, commas(st.Size()))
	return nil
}

// profileBytes is the source's profile file when one was found beside it (kept byte for
// byte), else one made from the model's ω.
func profileBytes(im *convert.Imported, m *model.Model) ([]byte, error) {
	c := m.Config
	var p *admin.Profile
	var err error
	if im.Profile != "" {
		p, err = admin.ReadProfileFile(im.Profile, c.EncoderLayers, c.DecoderLayers)
	} else {
		p, err = admin.ProfileFromModel(m)
	}
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	if err := p.Write(&b); err != nil {
		return nil, fmt.Errorf("export: profile: %w", err)
	}
	return b.Bytes(), nil
}
