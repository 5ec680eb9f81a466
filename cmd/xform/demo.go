package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/xform-dev/xform/convert"
	"github.com/xform-dev/xform/internal/demo"
)

// demoStep is one stage of `xform demo`. Each stage runs real commands on the embedded model
// and checks its own result, so the demo fails loudly if the tool is broken.
type demoStep struct {
	title string
	run   func(cmd *cobra.Command, work string, out io.Writer) error
}

func newDemoCmd() *cobra.Command {
	var keep, device string
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run xform's main jobs on a small real Admin checkpoint embedded in the binary",
		Long: `Demo extracts a small Transformer-Clinic (Admin) checkpoint, its dictionaries, profile
file and its corpus (train/valid/test data-bin) from the binary and runs xform on them:
inspect, import, generate, fold, export, then a short Admin training run (profile, train,
generate with the result), checking each result. Nothing is downloaded.

Generation, profiling and training run on the GPU when one is usable, as xform generate
and train do by default (the checks against the reference hold on either device);
--device cpu keeps everything on the CPU.`,
		Example: `  xform demo
  xform demo --keep /tmp/xform-demo   # keep the files it made
  xform demo --device cpu             # no GPU even when one is present`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			work := keep
			if work == "" {
				d, err := os.MkdirTemp("", "xform-demo-")
				if err != nil {
					return err
				}
				defer os.RemoveAll(d)
				work = d
			} else if err := os.MkdirAll(work, 0o755); err != nil {
				return err
			}
			if err := demo.Extract(work); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			for i, s := range demoSteps(device) {
				fmt.Fprintf(out, "\n== %d. %s\n", i+1, s.title)
				if err := s.run(cmd, work, out); err != nil {
					return fmt.Errorf("demo step %q: %w", s.title, err)
				}
			}
			fmt.Fprintln(out, "\ndemo: all steps passed")
			return nil
		},
	}
	cmd.Flags().StringVar(&keep, "keep", "", "work in this directory and keep its files")
	cmd.Flags().StringVar(&device, "device", "", "cuda, cuda:N or cpu for training and generation (default: the GPU when usable)")
	return cmd
}

// demoRefBLEU is what the Clinic fork's own generate.py printed for the embedded checkpoint
// (fixtures/clinic/runs/a_admin/gen_beam4_cpu.txt).
const demoRefBLEU = "BLEU4 = 28.58, 66.5/40.2/21.6/11.6 (BP=1.000, ratio=1.218, syslen=1294, reflen=1062)"

// demoORTCheck runs the exported encoder and first-step decoder (teacher-forced over the whole
// target) in onnxruntime on the batch `xform score` dumped, and compares the log-probs with
// xform's own. The Go forward matches the reference to ≤1e-5 and ONNX Runtime's fp32 kernels
// differ from it only by rounding, so 1e-4 is a loose bound.
const demoORTCheck = `
import sys, numpy as np, onnxruntime as ort
d, dump = sys.argv[1], sys.argv[2]
src = np.load(dump + "/batch/src_tokens.npy"); prev = np.load(dump + "/batch/prev_output_tokens.npy")
ref = np.load(dump + "/lprobs.npy")
so = ort.SessionOptions(); so.log_severity_level = 3
enc = ort.InferenceSession(d + "/encoder_model.onnx", so, providers=["CPUExecutionProvider"])
dec = ort.InferenceSession(d + "/decoder_model.onnx", so, providers=["CPUExecutionProvider"])
mask = (src != 1).astype(np.int64)
h = enc.run(["last_hidden_state"], {"input_ids": src, "attention_mask": mask})[0]
logits = dec.run(["logits"], {"input_ids": prev, "encoder_attention_mask": mask, "encoder_hidden_states": h})[0].astype(np.float64)
lp = logits - logits.max(-1, keepdims=True); lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
keep = prev != 1
err = float(np.abs(lp - ref)[keep].max())
print("check: onnxruntime %s log-probs vs xform's on %d sentences: max |diff| %.2e" % (ort.__version__, src.shape[0], err))
sys.exit(0 if err < 1e-4 else 1)
`

// runSub runs an xform subcommand in-process, echoing the command line.
func runSub(out io.Writer, args ...string) (string, error) {
	fmt.Fprintf(out, "$ xform %s\n", joinArgs(args))
	root := newRootCmd()
	var buf bytes.Buffer
	root.SetOut(io.MultiWriter(out, &buf))
	root.SetErr(out)
	root.SetArgs(args)
	err := root.Execute()
	return buf.String(), err
}

func joinArgs(args []string) string {
	s := ""
	for i, a := range args {
		if i > 0 {
			s += " "
		}
		s += a
	}
	return s
}

func demoSteps(device string) []demoStep {
	return []demoStep{
		{"inspect the Admin checkpoint", func(cmd *cobra.Command, work string, out io.Writer) error {
			_, err := runSub(out, "inspect", filepath.Join(work, "checkpoint_last.pt"))
			return err
		}},
		{"import it into an xform model directory and check every tensor", func(cmd *cobra.Command, work string, out io.Writer) error {
			dir := filepath.Join(work, "model")
			if _, err := runSub(out, "import", work, "-o", dir, "--force"); err != nil {
				return err
			}
			a, err := convert.LoadCheckpoint(filepath.Join(work, "checkpoint_last.pt"))
			if err != nil {
				return err
			}
			b, err := convert.LoadCheckpoint(dir)
			if err != nil {
				return err
			}
			for name, t := range a.Params {
				if u := b.Params[name]; u == nil || !bytes.Equal(t.Data, u.Data) || u.DType != t.DType {
					return fmt.Errorf("tensor %s differs after import", name)
				}
			}
			fmt.Fprintf(out, "check: %d tensors in model.safetensors are bit-identical to the checkpoint\n", len(a.Params))
			return nil
		}},
		{"translate the test set with beam search (as fairseq-generate)", func(cmd *cobra.Command, work string, out io.Writer) error {
			var buf bytes.Buffer
			if _, err := runSub(&buf, "generate", filepath.Join(work, "data-bin"), "--path", filepath.Join(work, "model"),
				"--beam", "4", "--batch-size", "128", "--quiet"); err != nil {
				out.Write(buf.Bytes())
				return err
			}
			out.Write(buf.Bytes())
			if !bytes.Contains(buf.Bytes(), []byte(demoRefBLEU)) {
				return fmt.Errorf("BLEU line differs from the reference's %q", demoRefBLEU)
			}
			fmt.Fprintln(out, "check: same BLEU line as the reference fairseq-generate on this model")
			return nil
		}},
		{"fold Admin's ω into a plain Post-LN Transformer and translate with it", func(cmd *cobra.Command, work string, out io.Writer) error {
			folded := filepath.Join(work, "folded.pt")
			if _, err := runSub(out, "fold", filepath.Join(work, "checkpoint_last.pt"), "-o", folded,
				"--data", filepath.Join(work, "data-bin"), "--max-sentences", "16"); err != nil {
				return err
			}
			m, err := convert.LoadCheckpoint(folded)
			if err != nil {
				return err
			}
			if m.Config.Init.HasOmega() {
				return fmt.Errorf("folded model still has Admin ω (init %s)", m.Config.Init)
			}
			var buf bytes.Buffer
			if _, err := runSub(&buf, "generate", filepath.Join(work, "data-bin"), "--path", folded,
				"--beam", "4", "--batch-size", "128", "--quiet"); err != nil {
				out.Write(buf.Bytes())
				return err
			}
			out.Write(buf.Bytes())
			if !bytes.Contains(buf.Bytes(), []byte(demoRefBLEU)) {
				return fmt.Errorf("the folded model's BLEU line differs from the reference's %q", demoRefBLEU)
			}
			fmt.Fprintln(out, "check: the folded plain Transformer translates exactly as the Admin original (same BLEU line)")
			return nil
		}},
		{"export a fairseq checkpoint the Clinic fork loads, and read it back", func(cmd *cobra.Command, work string, out io.Writer) error {
			exported := filepath.Join(work, "exported.pt")
			if _, err := runSub(out, "export", "--fairseq", filepath.Join(work, "model"), "-o", exported, "--force"); err != nil {
				return err
			}
			a, err := convert.LoadCheckpoint(filepath.Join(work, "checkpoint_last.pt"))
			if err != nil {
				return err
			}
			b, err := convert.LoadCheckpoint(exported)
			if err != nil {
				return err
			}
			for name, t := range a.Params {
				if u := b.Params[name]; u == nil || !bytes.Equal(t.Data, u.Data) {
					return fmt.Errorf("tensor %s differs after export", name)
				}
			}
			fmt.Fprintf(out, "check: %d tensors round-trip bit-identically through the exported .pt\n", len(a.Params))
			return nil
		}},
		{"export ONNX graphs and run them in ONNX Runtime (when Python's onnxruntime is installed)", func(cmd *cobra.Command, work string, out io.Writer) error {
			dir := filepath.Join(work, "onnx")
			if _, err := runSub(out, "export", "--onnx", filepath.Join(work, "model"), "-o", dir, "--force"); err != nil {
				return err
			}
			dump := filepath.Join(work, "dump")
			var buf bytes.Buffer
			if _, err := runSub(&buf, "score", filepath.Join(work, "data-bin"), "--path", filepath.Join(work, "model"),
				"--dump", dump, "--device", "cpu"); err != nil {
				out.Write(buf.Bytes())
				return err
			}
			py, err := exec.LookPath("python3")
			if err == nil {
				err = exec.Command(py, "-c", "import onnxruntime, numpy").Run()
			}
			if err != nil {
				fmt.Fprintln(out, "onnxruntime not available (pip install onnxruntime numpy): skipped the runtime check")
				return nil
			}
			c := exec.Command(py, "-c", demoORTCheck, dir, dump)
			c.Stdout, c.Stderr = out, out
			if err := c.Run(); err != nil {
				return fmt.Errorf("onnxruntime check: %w", err)
			}
			return nil
		}},
		{"Admin training, stage 1: profile ω on the first batch of the embedded corpus", func(cmd *cobra.Command, work string, out io.Writer) error {
			dir := filepath.Join(work, "train")
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			args := append([]string{"profile", filepath.Join(work, "data-bin")}, demoModelFlags...)
			args = append(args, deviceArgs(device)...)
			if _, err := runSub(out, append(args, "--max-tokens", "1024", "--seed", "1",
				"-o", filepath.Join(dir, "profile.ratio.init"), "--force")...); err != nil {
				return err
			}
			fmt.Fprintln(out, "check: profile.ratio.init written (one ω per residual branch, as the Clinic's adaptive-profiling run)")
			return nil
		}},
		{"Admin training, stage 2: train 60 updates with RAdam (fairseq-train's log), validating every 20", func(cmd *cobra.Command, work string, out io.Writer) error {
			dir := filepath.Join(work, "train")
			args := append([]string{"train", filepath.Join(work, "data-bin")}, demoModelFlags...)
			args = append(args, "--init", "adaptive", "--profile", filepath.Join(dir, "profile.ratio.init"), "--optimizer", "radam",
				"--adam-betas", "(0.9,0.98)", "--clip-norm", "0", "--lr", "3e-3", "--lr-scheduler", "inverse_sqrt", "--warmup-init-lr", "1e-7",
				"--warmup-updates", "20", "--label-smoothing", "0.1", "--max-tokens", "1024", "--seed", "1", "--max-update", "60",
				"--save-interval-updates", "20", "--no-epoch-checkpoints", "--log-interval", "20",
				"--save-dir", filepath.Join(dir, "ckpt"), "--restore-file", "none.pt")
			args = append(args, deviceArgs(device)...)
			log, err := runSub(out, args...)
			if err != nil {
				return err
			}
			first, last, n := validLosses(log)
			if n < 2 || !(last < first) {
				return fmt.Errorf("validation loss did not go down (%d validations, first %g, last %g bits)", n, first, last)
			}
			fmt.Fprintf(out, "check: validation loss went down from %.3f to %.3f bits over %d validations\n", first, last, n)
			return nil
		}},
		{"translate with the model just trained", func(cmd *cobra.Command, work string, out io.Writer) error {
			ckpt := filepath.Join(work, "train", "ckpt", "checkpoint_last.pt")
			m, err := convert.LoadCheckpoint(ckpt)
			if err != nil {
				return err
			}
			if !m.Config.Init.HasOmega() {
				return fmt.Errorf("the trained checkpoint has no Admin ω (init %s)", m.Config.Init)
			}
			// 60 updates give a weak model: short length limits keep its search quick.
			var buf bytes.Buffer
			args := append([]string{"generate", filepath.Join(work, "data-bin"), "--path", ckpt, "--beam", "4", "--batch-size", "128",
				"--max-len-a", "1.2", "--max-len-b", "10", "--quiet"}, deviceArgs(device)...)
			_, err = runSub(&buf, args...)
			out.Write(buf.Bytes())
			if err != nil {
				return err
			}
			if !bytes.Contains(buf.Bytes(), []byte("BLEU4 = ")) {
				return fmt.Errorf("generate printed no BLEU line")
			}
			fmt.Fprintln(out, "check: the freshly trained Admin checkpoint (Clinic layout, with RAdam state) loads and translates the test set")
			return nil
		}},
	}
}

// deviceArgs passes demo's --device on to a subcommand (none: the subcommand's default,
// the GPU when usable).
func deviceArgs(device string) []string {
	if device == "" {
		return nil
	}
	return []string{"--device", device}
}

// demoModelFlags is the embedded model's architecture (the fixture recipe: 3+3 layers,
// d 32, FFN 64, 4 heads, shared embeddings).
var demoModelFlags = []string{"--arch", "transformer_iwslt_de_en", "--encoder-layers", "3", "--decoder-layers", "3",
	"--encoder-embed-dim", "32", "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
	"--encoder-attention-heads", "4", "--decoder-attention-heads", "4", "--share-all-embeddings"}

// validLosses returns the first and last validation loss of a training log and how many
// there were.
func validLosses(log string) (first, last float64, n int) {
	for _, l := range strings.Split(log, "\n") {
		_, rest, ok := strings.Cut(l, " subset | loss ")
		if !ok {
			continue
		}
		var v float64
		if _, err := fmt.Sscanf(rest, "%g", &v); err != nil {
			continue
		}
		if n == 0 {
			first = v
		}
		last = v
		n++
	}
	return first, last, n
}
