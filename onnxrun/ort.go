//go:build onnxruntime

package onnxrun

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/xform-dev/xform/kernels/cpu"
	"github.com/xform-dev/xform/model"
)

var (
	initOnce sync.Once
	initErr  error
)

// libPath resolves the shared library: the option, $XFORM_ONNXRUNTIME_LIB, or the
// onnxruntime Python wheel's capi directory.
func libPath(lib string) (string, error) {
	if lib == "" {
		lib = os.Getenv("XFORM_ONNXRUNTIME_LIB")
	}
	if lib != "" {
		if _, err := os.Stat(lib); err != nil {
			return "", fmt.Errorf("onnxruntime library: %w", err)
		}
		return lib, nil
	}
	out, err := exec.Command("python3", "-c", "import onnxruntime,os;print(os.path.dirname(onnxruntime.__file__))").Output()
	if err != nil {
		return "", fmt.Errorf("onnxruntime library not found: pass --onnxruntime-lib or set XFORM_ONNXRUNTIME_LIB (python3 -c 'import onnxruntime' failed: %v)", err)
	}
	m, _ := filepath.Glob(filepath.Join(strings.TrimSpace(string(out)), "capi", "libonnxruntime.so*"))
	if len(m) == 0 {
		return "", fmt.Errorf("onnxruntime library not found in %s/capi: pass --onnxruntime-lib or set XFORM_ONNXRUNTIME_LIB", strings.TrimSpace(string(out)))
	}
	return m[len(m)-1], nil
}

// LibPath reports the library Open would load (for tests and messages).
func LibPath(lib string) (string, error) { return libPath(lib) }

func initRuntime(lib string) error {
	initOnce.Do(func() {
		p, err := libPath(lib)
		if err != nil {
			initErr = err
			return
		}
		ort.SetSharedLibraryPath(p)
		if err := ort.InitializeEnvironment(ort.WithLogLevelError()); err != nil {
			initErr = fmt.Errorf("onnxruntime %s: %w", p, err)
		}
	})
	return initErr
}

type session struct {
	s       *ort.DynamicAdvancedSession
	inputs  []string
	outputs []string
}

func newSession(path string, so *ort.SessionOptions) (*session, error) {
	in, out, err := ort.GetInputOutputInfoWithOptions(path, so)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	s := &session{}
	for _, i := range in {
		s.inputs = append(s.inputs, i.Name)
	}
	for _, o := range out {
		s.outputs = append(s.outputs, o.Name)
	}
	s.s, err = ort.NewDynamicAdvancedSession(path, s.inputs, s.outputs, so)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// run feeds the named inputs and returns the outputs by name; the caller destroys them.
func (s *session) run(feed map[string]ort.Value) (map[string]ort.Value, error) {
	in := make([]ort.Value, len(s.inputs))
	for i, n := range s.inputs {
		v, ok := feed[n]
		if !ok {
			return nil, fmt.Errorf("onnx: no value for input %q", n)
		}
		in[i] = v
	}
	out := make([]ort.Value, len(s.outputs))
	if err := s.s.Run(in, out); err != nil {
		return nil, err
	}
	m := make(map[string]ort.Value, len(out))
	for i, n := range s.outputs {
		m[n] = out[i]
	}
	return m, nil
}

// Model is an exported model directory opened in ONNX Runtime.
type Model struct {
	cfg           model.Config
	layers, heads int
	enc, dec, dwp *session
	be            *cpu.Backend
}

// Open loads encoder_model.onnx, decoder_model.onnx and decoder_with_past_model.onnx
// from dir (fp32 exports) and config.json's xform config.
func Open(dir string, opt Options) (*Model, error) {
	raw, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, err
	}
	var c struct {
		Dtype string `json:"torch_dtype"`
		Xform struct {
			Config model.Config `json:"config"`
		} `json:"xform"`
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, fmt.Errorf("%s/config.json: %w", dir, err)
	}
	if c.Dtype != "" && c.Dtype != "float32" {
		return nil, fmt.Errorf("%s: %s exports are not supported by generate --onnx (export without --fp16)", dir, c.Dtype)
	}
	cfg := c.Xform.Config
	if cfg.TgtVocab < 2 || cfg.DecoderLayers < 1 || cfg.DecoderHeads < 1 {
		return nil, fmt.Errorf("%s/config.json: no xform config", dir)
	}
	if err := initRuntime(opt.Lib); err != nil {
		return nil, err
	}
	so, err := ort.NewSessionOptions()
	if err != nil {
		return nil, err
	}
	defer so.Destroy()
	if opt.Threads > 0 {
		if err := so.SetIntraOpNumThreads(opt.Threads); err != nil {
			return nil, err
		}
	}
	m := &Model{cfg: cfg, layers: cfg.DecoderLayers, heads: cfg.DecoderHeads, be: cpu.New(1)}
	for _, x := range []struct {
		p    **session
		file string
	}{{&m.enc, "encoder_model.onnx"}, {&m.dec, "decoder_model.onnx"}, {&m.dwp, "decoder_with_past_model.onnx"}} {
		s, err := newSession(filepath.Join(dir, x.file), so)
		if err != nil {
			m.Close()
			return nil, err
		}
		*x.p = s
	}
	return m, nil
}

// Close releases the sessions.
func (m *Model) Close() error {
	for _, s := range []*session{m.enc, m.dec, m.dwp} {
		if s != nil {
			s.s.Destroy()
		}
	}
	return nil
}

// Config is the exported model's xform config.
func (m *Model) Config() model.Config { return m.cfg }

// MaxSourcePositions is the source position limit.
func (m *Model) MaxSourcePositions() int { return m.cfg.MaxSourcePositions }

// MaxDecoderPositions is the target position limit.
func (m *Model) MaxDecoderPositions() int { return m.cfg.MaxTargetPositions }

// Generate runs model.Search (fairseq's beam search) on ONNX Runtime.
func (m *Model) Generate(ctx context.Context, src []int32, B, S int, opt model.BeamOptions) ([][]model.Hypothesis, error) {
	return model.Search(ctx, func(beam, maxLen int) (model.SearchState, error) {
		return m.newState(src, B, S, beam)
	}, B, S, m.cfg.TgtVocab, m.MaxDecoderPositions(), opt)
}

// hostTensor is a float32 tensor kept in Go memory, row-major with rows first.
type hostTensor struct {
	shape []int64
	data  []float32
}

func (h *hostTensor) rowLen() int { return len(h.data) / int(h.shape[0]) }

// gather keeps rows idx (row i := old row idx[i]).
func (h *hostTensor) gather(idx []int32) {
	rl := h.rowLen()
	out := make([]float32, len(idx)*rl)
	for i, j := range idx {
		copy(out[i*rl:(i+1)*rl], h.data[int(j)*rl:(int(j)+1)*rl])
	}
	h.data = out
	h.shape = append([]int64{int64(len(idx))}, h.shape[1:]...)
}

// state is a model.SearchState over the ONNX decoders.
type state struct {
	m      *Model
	n, S   int
	step   int
	mask   []int64     // [n, S]
	encOut *hostTensor // [n, S, d], needed by the first step only
	past   map[string]*hostTensor
}

func (m *Model) newState(src []int32, B, S, beam int) (*state, error) {
	ids := make([]int64, B*S)
	mask := make([]int64, B*S)
	for i, t := range src {
		ids[i] = int64(t)
		if t != model.Pad {
			mask[i] = 1
		}
	}
	ti, err := ort.NewTensor(ort.NewShape(int64(B), int64(S)), ids)
	if err != nil {
		return nil, err
	}
	defer ti.Destroy()
	tm, err := ort.NewTensor(ort.NewShape(int64(B), int64(S)), mask)
	if err != nil {
		return nil, err
	}
	defer tm.Destroy()
	out, err := m.enc.run(map[string]ort.Value{"input_ids": ti, "attention_mask": tm})
	if err != nil {
		return nil, fmt.Errorf("onnx encoder: %w", err)
	}
	defer destroyAll(out)
	h, err := host(out, "last_hidden_state")
	if err != nil {
		return nil, err
	}
	rows := make([]int32, 0, B*beam)
	for b := 0; b < B; b++ {
		for k := 0; k < beam; k++ {
			rows = append(rows, int32(b))
		}
	}
	h.gather(rows)
	mt := &hostMask{S: S, data: mask}
	mt.gather(rows)
	return &state{m: m, n: B * beam, S: S, mask: mt.data, encOut: h, past: map[string]*hostTensor{}}, nil
}

type hostMask struct {
	S    int
	data []int64
}

func (h *hostMask) gather(idx []int32) {
	out := make([]int64, len(idx)*h.S)
	for i, j := range idx {
		copy(out[i*h.S:(i+1)*h.S], h.data[int(j)*h.S:(int(j)+1)*h.S])
	}
	h.data = out
}

func destroyAll(m map[string]ort.Value) {
	for _, v := range m {
		if v != nil {
			v.Destroy()
		}
	}
}

// host copies a float32 output into Go memory.
func host(out map[string]ort.Value, name string) (*hostTensor, error) {
	v, ok := out[name]
	if !ok || v == nil {
		return nil, fmt.Errorf("onnx: no output %q", name)
	}
	t, ok := v.(*ort.Tensor[float32])
	if !ok {
		return nil, fmt.Errorf("onnx: output %q is %v, want float32", name, v.DataType())
	}
	sh := t.GetShape()
	return &hostTensor{shape: append([]int64(nil), sh...), data: append([]float32(nil), t.GetData()...)}, nil
}

func (s *state) Rows() int { return s.n }

func (s *state) Reorder(idx []int32) error {
	for _, j := range idx {
		if j < 0 || int(j) >= s.n {
			return fmt.Errorf("%w: reorder index %d outside %d rows", model.ErrInput, j, s.n)
		}
	}
	for _, h := range s.past {
		h.gather(idx)
	}
	if s.encOut != nil {
		s.encOut.gather(idx)
	}
	mt := &hostMask{S: s.S, data: s.mask}
	mt.gather(idx)
	s.mask = mt.data
	s.n = len(idx)
	return nil
}

func (s *state) Step(ctx context.Context, tokens []int32) ([]float32, error) {
	if len(tokens) != s.n {
		return nil, fmt.Errorf("%w: %d tokens for %d rows", model.ErrInput, len(tokens), s.n)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	n, V := int64(s.n), s.m.cfg.TgtVocab
	ids := make([]int64, s.n)
	for i, t := range tokens {
		ids[i] = int64(t)
	}
	var tensors []ort.Value
	defer func() {
		for _, t := range tensors {
			t.Destroy()
		}
	}()
	f32 := func(h *hostTensor) (ort.Value, error) {
		t, err := ort.NewTensor(ort.Shape(h.shape), h.data)
		if err == nil {
			tensors = append(tensors, t)
		}
		return t, err
	}
	feed := map[string]ort.Value{}
	ti, err := ort.NewTensor(ort.NewShape(n, 1), ids)
	if err != nil {
		return nil, err
	}
	tensors = append(tensors, ti)
	feed["input_ids"] = ti
	tm, err := ort.NewTensor(ort.NewShape(n, int64(s.S)), s.mask)
	if err != nil {
		return nil, err
	}
	tensors = append(tensors, tm)
	feed["encoder_attention_mask"] = tm
	sess := s.m.dwp
	if s.step == 0 {
		sess = s.m.dec
		if feed["encoder_hidden_states"], err = f32(s.encOut); err != nil {
			return nil, err
		}
	} else {
		for name, h := range s.past {
			if feed[name], err = f32(h); err != nil {
				return nil, err
			}
		}
	}
	out, err := sess.run(feed)
	if err != nil {
		return nil, fmt.Errorf("onnx decoder step %d: %w", s.step, err)
	}
	defer destroyAll(out)
	for i := 0; i < s.m.layers; i++ {
		for _, side := range []string{"decoder", "encoder"} {
			if s.step > 0 && side == "encoder" {
				continue
			}
			for _, kv := range []string{"key", "value"} {
				h, err := host(out, fmt.Sprintf("present.%d.%s.%s", i, side, kv))
				if err != nil {
					return nil, err
				}
				s.past[fmt.Sprintf("past_key_values.%d.%s.%s", i, side, kv)] = h
			}
		}
	}
	if s.step == 0 {
		s.encOut = nil
	}
	lg, err := host(out, "logits")
	if err != nil {
		return nil, err
	}
	if len(lg.shape) != 3 || lg.shape[0] != n || lg.shape[2] != int64(V) {
		return nil, fmt.Errorf("onnx: logits shape %v, want [%d, T, %d]", lg.shape, n, V)
	}
	T := int(lg.shape[1])
	last := make([]float32, s.n*V)
	for i := 0; i < s.n; i++ {
		copy(last[i*V:(i+1)*V], lg.data[(i*T+T-1)*V:(i*T+T)*V])
	}
	// log_softmax in float32 with float64 sums, the CPU backend's kernel (fairseq's fp32).
	x := s.m.be.Upload(last)
	y := s.m.be.Alloc(s.n * V)
	s.m.be.LogSoftmax(y, x, s.n, V)
	s.m.be.Download(last, y)
	s.step++
	return last, nil
}
