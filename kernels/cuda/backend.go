package cuda

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/xform-dev/xform/kernels"
)

// Options configure New.
type Options struct {
	// Ordinal is the device to use (0 = first).
	Ordinal int
	// Search says where libraries are looked for (zero value: DefaultSearch).
	Search Search
	// CacheDir holds compiled cubins ("" = DefaultCacheDir; "-" = no cache).
	CacheDir string
	// SyncCheck synchronises after every launch so an asynchronous fault is reported
	// by the operation that caused it (slow; for tests and debugging). The environment
	// variable XFORM_CUDA_SYNC=1 turns it on too.
	SyncCheck bool
	// PoisonUninit fills every AllocUninit buffer with NaN, so that an element its
	// caller fails to write shows up in the results (tests; XFORM_CUDA_POISON=1 too).
	PoisonUninit bool
	// Precision selects the operand type of the GEMMs in Linear, Gemm and
	// LinearBackward (see Precision). Everything else stays float32.
	Precision Precision
	// Graphs makes Graphed (kernels.StepGrapher) record and replay CUDA graphs; off,
	// it runs its function eagerly. XFORM_CUDA_GRAPHS=1 or 0 overrides it.
	Graphs bool
	// Autotune times cuBLASLt's first algorithms for each new GEMM plan (with plan
	// reuse: each shape class) once and keeps the fastest (autotune.go): faster GEMMs
	// on shapes that repeat, at the price of a wait for the device per new class.
	// XFORM_CUDA_AUTOTUNE=1 or 0 overrides it.
	Autotune bool
	// TuneMemo, when not nil, holds the autotune's decisions, shared with the other
	// Backends given the same memo; nil: the Backend keeps its own.
	TuneMemo *GEMMTuneMemo
	// DeferWeightGrads makes DeferWeightGrads (kernels.WeightGradDeferrer) hold back the
	// 16-bit weight-gradient products of a training step's backward and run same-shape
	// ones as one batched matmul at the flush (dw_deferred.go).
	// XFORM_CUDA_DEFER_DW=1 or 0 overrides it.
	DeferWeightGrads bool
}

// Precision is the operand type of the backend's GEMMs. Inputs, weights and outputs
// stay float32 buffers; with BF16 or FP16 the operands are rounded to 16 bits just
// before the product and cuBLAS accumulates in float32 (tensor cores), which is what
// torch.autocast does for Linear. Master weights, activations, LayerNorm, softmax,
// the loss and the optimizer remain float32.
type Precision int

const (
	// FP32 multiplies float32 operands with float32 accumulation, no TF32 (pedantic).
	FP32 Precision = iota
	// BF16 rounds GEMM operands to bfloat16 (round to nearest even).
	BF16
	// FP16 rounds GEMM operands to IEEE half; values beyond ±65504 become ±Inf, which
	// a loss-scaled trainer detects as an overflow (fairseq's --fp16 semantics).
	FP16
)

func (p Precision) String() string {
	switch p {
	case FP32:
		return "fp32"
	case BF16:
		return "bf16"
	case FP16:
		return "fp16"
	}
	return fmt.Sprintf("Precision(%d)", int(p))
}

// Backend runs kernels.Backend operations on one GPU. Every method locks the Backend
// and the calling goroutine's OS thread and makes the device's primary context current
// on that thread (a CUDA context is current per thread, and Go moves goroutines between
// threads), so a Backend may be used from any goroutine. All work goes to the default
// stream, in order. Methods panic with *Error or *OOMError when the GPU fails, as the
// interface has no error results; Guard turns such a panic back into an error.
type Backend struct {
	mu        sync.Mutex
	drv       *driver
	libs      *libs
	dev       int32
	ctx       uintptr
	blasH     uintptr
	blasFast  uintptr // default-math handle for bf16 (tensor cores), made on first use
	precision Precision
	half      *allocation // 16-bit copies of GEMM operands (precision.go), grown on demand
	lt        ltState     // cuBLASLt plans for the 16-bit Linear (cublaslt.go), made on first use
	info      DeviceInfo
	arch      string
	nvrtcVer  string
	driverVer int
	mods      []uintptr
	fn        functions
	pool      *pool
	prm       *params
	scratch   [numSlots]*allocation // host-argument staging, one block per slot* constant
	// listCache holds list-kernel descriptors uploaded once (stageListWords).
	listCache []listUpload
	compiled  int // programs compiled now (not from the cache)
	syncCheck bool
	poison    bool
	profile   *opProfile      // XFORM_CUDA_PROFILE=1; printed to stderr by Close
	scopes    [][]*allocation // kernels.Scoper: allocations of each open scope
	lazy      lazyKernels
	tiledOff  bool // tests: attention takes the row kernels even where the tiled ones fit
	// flashAlways: tests: flash attention also where the stored-probability kernels
	// are used because they are faster (attention_flash.go).
	flashAlways bool
	// bgradOff: tests: LinearBackward's db from the column sum, not the GEMM epilogue
	// (precision.go).
	bgradOff bool
	// halfOff: tests: AllocHalf returns nil, so the model takes float32 buffers and
	// the Linears cast them (half.go).
	halfOff bool
	// roundedAdamOff: tests and XFORM_CUDA_ROUNDED_ADAM=0: RoundsUpdates is false, so a
	// model refreshes its 16-bit weight copies with RoundAll (optim_backward.go).
	roundedAdamOff bool
	// attnIn16On: the training attention reads 16-bit q, k, v and dout
	// (attention_mma16.go); on unless XFORM_CUDA_ATTN16=0 (tests: withAttnIn16).
	attnIn16On bool
	// lnWOn: XFORM_CUDA_LNW=1, the _w LayerNorm kernels (layernorm_fast.go) instead of
	// the _v ones. Off by default: same bits, but on the H200 (eighth session) the _w
	// backward the training step runs was 41.6 µs against 38.7 for _v and its finish.
	lnWOn bool
	// lnPOn: the pipelined LayerNorm forward (layernorm_fast_fwd_p*, layernorm_fast.go)
	// instead of the _v (or _w) one; XFORM_CUDA_LNP=0 turns it off. On by default: same
	// bits, and on the H200 (ninth session) 24.8 against 25.9 µs at the step's 7,872 × 512
	// (bench +0.9 %).
	lnPOn bool
	// lnKeepOff: XFORM_CUDA_LN_KEEP=0, no kernels.KeptMaskNormer (KeptMaskWords 0):
	// the LayerNorm backward draws the residual dropout's mask again (tests: the
	// same bits either way).
	lnKeepOff bool
	// lnRecomputeOff: XFORM_CUDA_LN_RECOMPUTE=0 turns lnFastFns.recompute off (the
	// forward stores z and the LayerNorm backward reads it; the same bits either way).
	lnRecomputeOff bool
	// pdl: on a GPU of compute capability 9.0 or later whose driver has
	// cuLaunchKernelEx, without the profile and unless XFORM_CUDA_PDL=0, the eager (not
	// captured) launches of the kernels of pdlFns (the production modules', every one
	// opening with XF_PDL_ENTRY) allow programmatic stream serialization (launch.go);
	// nil otherwise. On the H200 (fifteenth session) the 18L-18L bench gained 2.2 %
	// with it, and training gives the same bits (TestPDLTrainingSameBits). pdlLaunches
	// counts those launches.
	pdl         *pdlLaunch
	pdlFns      map[uintptr]bool
	pdlLaunches int
	// kvBatchOff: BatchCrossKV says no (XFORM_CUDA_KV_BATCH=0, tests), so nets made
	// after it project each decoder layer's cross-attention keys and values on their own;
	// kvBatchYes counts the times it said yes.
	kvBatchOff bool
	kvBatchYes int
	// reluBiasOff: ReLUDropoutBackwardBias declines (XFORM_CUDA_RELU_BIAS=0, tests), so
	// fc1's bias gradient is the deferred flush's column sum again; reluBiasCalls counts
	// the calls it took (relu_dropout.go).
	reluBiasOff   bool
	reluBiasCalls int
	// packCalls counts PackRows launches (tests: a packed step packed).
	packCalls int
	// packedAttnOff: XFORM_CUDA_PACKED_ATTN=0 (tests: the field): PackedAttention
	// declines, so a packed step expands rows around attention (PackRows).
	packedAttnOff bool
	// reluFoldOn: ApplyDropoutMask records masks, so the FFN backward folds its ReLU and
	// dropout backward into fc2's dx product (relu_fold.go); XFORM_CUDA_RELU_FOLD=1,
	// tests. Off by default: cuBLASLt 13.1's DRELU product with a 16-bit D took 109
	// against 33.5 µs at 7872×2048×512 on the H200 (bench −6.5 %).
	reluFoldOn bool
	// halfBiasOff: tests: HalfBiases false, so a model made after it keeps no 16-bit
	// bias copies and its 16-bit-output Linears round the float32 bias at every call.
	halfBiasOff bool
	// normAfterOff: tests and XFORM_CUDA_NORM_AFTER=0: AdamStepClipped ignores
	// OptimStep.NormAfter (the norm's own pass before the update, as before).
	// normsAfter counts the updates that formed the norm themselves (tests).
	normAfterOff bool
	normsAfter   int
	// freshDWOff: tests and XFORM_CUDA_FRESH_DW=0: FreshWeightGrads is false, so the
	// model clears every gradient before a step. freshDWs counts
	// LinearBackwardKeptFreshW calls (tests).
	freshDWOff bool
	freshDWs   int
	// am3Wide: the attention's bits kernels sized for 4 key blocks at every key length
	// (am3Switch.wide, attention_mma3.go); XFORM_CUDA_AM3NT=0, for the bench's A/B.
	am3Wide bool
	// roundAlls and roundedUpdates count RoundAll calls and the updates that wrote the
	// copies (kernels.RoundingOptimizer), for tests.
	roundAlls, roundedUpdates int
	// linearActForce: tests: LinearActBackward skips its first 1 or 2 epilogue
	// choices (linear_act.go), so the fallbacks run.
	linearActForce int
	// planReuse: cuBLASLt plans of a new shape reuse their class's algorithm and
	// remember refusals per kind (plan_reuse.go); XFORM_CUDA_PLAN_REUSE=0 turns it
	// off at New, tests flip it. ltPlans bounds the plan cache (0: by planReuse;
	// XFORM_CUDA_LT_PLANS).
	planReuse bool
	ltPlans   int
	// autotune: Options.Autotune or XFORM_CUDA_AUTOTUNE (tests flip it): a new
	// cuBLASLt plan times the heuristic's first results and keeps the fastest
	// (autotune.go).
	autotune bool
	// tuneAlgos is how many heuristic results the autotune times at most:
	// ltTuneAlgos, or XFORM_CUDA_TUNE_ALGOS (tuneAlgosFrom).
	tuneAlgos int
	// tuneMemo holds the autotune's decisions: Options.TuneMemo, or the Backend's own.
	tuneMemo *GEMMTuneMemo
	// dxAccumOff: LinearBackwardKeptAccum as the product into scratch + AddTo (tests,
	// XFORM_CUDA_DX_ACCUM=0).
	dxAccumOff bool
	// dwDefer: the deferred weight gradients' switch, queue and batch plans
	// (dw_deferred.go).
	dwDefer dwDeferState
	// finish queues the column-sum finishes while the weight gradients are deferred.
	finish finishQueue
	graph  graphState
	// reads are the free slots of deferred reads, readsMade all of them (read_async.go).
	reads, readsMade []*asyncRead
	// kernelNames maps kernels to their names for XFORM_CUDA_PROFILE=gpu (profile.go);
	// the lazily looked-up ones are added by kernel.
	kernelNames map[uintptr]string
	blasWS      uint64 // cuBLAS workspace while capturing (graphs.go)
	closed      bool
}

// lazyKernels are kernel sets looked up in the modules on their first launch (under the
// Backend's lock) rather than in New: the attention and LayerNorm variants chosen by
// shape and precision.
type lazyKernels struct {
	tiled    *attnTiledFns
	fastAttn *attnFastFns
	lnFast   *lnFastFns
	flash    *attnFlashFns
	loss     *lossState
	mma      *attnMMAFns
}

// functions are the kernels looked up after loading the modules.
type functions struct {
	copy2d, gatherRows, fillRows, embed, addRows uintptr
	packRowsV, packRowsH                         uintptr
	layernorm, softmax, logSoftmax, activate     uintptr
	residual, attention, meanHeads               uintptr
	f32ToBF16, bf16ToF32, f32ToF16, f16ToF32     uintptr
	castBF16x3, castF16x3                        uintptr
	train                                        trainFunctions
	fused                                        fusedFunctions
	half                                         halfFunctions
}

func (f *functions) table() map[string]*uintptr {
	m := map[string]*uintptr{
		"copy2d": &f.copy2d, "gather_rows": &f.gatherRows, "fill_rows": &f.fillRows,
		"pack_rows_v": &f.packRowsV, "pack_rows_h": &f.packRowsH,
		"embed": &f.embed, "add_rows": &f.addRows, "layernorm": &f.layernorm,
		"softmax": &f.softmax, "log_softmax": &f.logSoftmax, "activate": &f.activate,
		"residual": &f.residual, "attention": &f.attention, "mean_heads": &f.meanHeads,
		"f32_to_bf16": &f.f32ToBF16, "bf16_to_f32": &f.bf16ToF32,
		"f32_to_f16": &f.f32ToF16, "f16_to_f32": &f.f16ToF32,
		"f32_to_bf16_3": &f.castBF16x3, "f32_to_f16_3": &f.castF16x3,
	}
	f.train.add(m)
	f.fused.add(m)
	f.half.add(m)
	return m
}

var (
	_ kernels.Backend = (*Backend)(nil)
	_ kernels.Scoper  = (*Backend)(nil)
)

// New loads the driver and libraries, retains the device's primary context, compiles
// (or loads from the cache) every kernel for the device's architecture and creates a
// cuBLAS handle. Errors wrap ErrNoDriver, ErrOldDriver, ErrNoDevice or ErrNoLibrary when
// the machine cannot run it, so callers can fall back to the CPU.
func New(ctx context.Context, opt Options) (_ *Backend, err error) {
	if opt.Precision < FP32 || opt.Precision > FP16 {
		return nil, fmt.Errorf("cuda: unknown GEMM precision %v", opt.Precision)
	}
	s := opt.Search
	if s.Getenv == nil && s.Root == "" {
		s = DefaultSearch()
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	drv, err := loadDriver(s)
	if err != nil {
		return nil, err
	}
	be := &Backend{drv: drv, prm: newParams(), syncCheck: opt.SyncCheck || os.Getenv("XFORM_CUDA_SYNC") == "1",
		pool: &pool{free: map[uint64][]uint64{}}, precision: opt.Precision}
	be.poison = opt.PoisonUninit || os.Getenv("XFORM_CUDA_POISON") == "1"
	be.planReuse = os.Getenv("XFORM_CUDA_PLAN_REUSE") != "0"
	if v := os.Getenv("XFORM_CUDA_LT_PLANS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 2*ltKeepRecent {
			return nil, fmt.Errorf("cuda: XFORM_CUDA_LT_PLANS=%q: want a plan count ≥ %d", v, 2*ltKeepRecent)
		}
		be.ltPlans = n
	}
	// The A/B switch for the bench: the copies refreshed by RoundAll, as before.
	be.roundedAdamOff = os.Getenv("XFORM_CUDA_ROUNDED_ADAM") == "0"
	be.normAfterOff = os.Getenv("XFORM_CUDA_NORM_AFTER") == "0"
	be.freshDWOff = os.Getenv("XFORM_CUDA_FRESH_DW") == "0"
	be.attnIn16On = os.Getenv("XFORM_CUDA_ATTN16") != "0"
	be.packedAttnOff = os.Getenv("XFORM_CUDA_PACKED_ATTN") == "0"
	be.lnWOn = os.Getenv("XFORM_CUDA_LNW") == "1"
	be.lnPOn = os.Getenv("XFORM_CUDA_LNP") != "0"
	be.lnKeepOff = os.Getenv("XFORM_CUDA_LN_KEEP") == "0"
	be.lnRecomputeOff = os.Getenv("XFORM_CUDA_LN_RECOMPUTE") == "0"
	be.am3Wide = os.Getenv("XFORM_CUDA_AM3NT") == "0"
	be.reluFoldOn = os.Getenv("XFORM_CUDA_RELU_FOLD") == "1"
	be.reluBiasOff = os.Getenv("XFORM_CUDA_RELU_BIAS") == "0"
	be.kvBatchOff = os.Getenv("XFORM_CUDA_KV_BATCH") == "0"
	be.autotune = envSwitch(opt.Autotune, os.Getenv("XFORM_CUDA_AUTOTUNE"))
	be.tuneAlgos = tuneAlgosFrom(os.Getenv("XFORM_CUDA_TUNE_ALGOS"))
	be.tuneMemo = opt.TuneMemo
	be.dwDefer.on = envSwitch(opt.DeferWeightGrads, os.Getenv("XFORM_CUDA_DEFER_DW"))
	be.finish.init()
	be.dxAccumOff = os.Getenv("XFORM_CUDA_DX_ACCUM") == "0"
	if be.tuneMemo == nil {
		be.tuneMemo = NewGEMMTuneMemo()
	}
	switch os.Getenv("XFORM_CUDA_PROFILE") {
	case "1":
		be.profile = newOpProfile()
	case "gpu":
		be.profile = newOpProfile()
		be.profile.drv, be.profile.gpu = drv, true
	}
	var fail func(error)
	probe := &Report{}
	fail = func(e error) {
		if err == nil {
			err = e
		}
	}
	probeDevices(drv, probe, fail)
	if err != nil {
		return nil, err
	}
	if opt.Ordinal < 0 || opt.Ordinal >= len(probe.Devices) {
		return nil, fmt.Errorf("%w: device %d asked, %d present", ErrNoDevice, opt.Ordinal, len(probe.Devices))
	}
	be.info = probe.Devices[opt.Ordinal]
	if os.Getenv("XFORM_CUDA_PDL") != "0" && be.info.Major >= 9 && drv.cuLaunchKernelEx != 0 && be.profile == nil {
		be.pdl = newPDLLaunch()
	}
	be.pdlFns = map[uintptr]bool{}
	be.driverVer = probe.Driver.Version
	if be.info.Error != "" {
		return nil, fmt.Errorf("cuda: device %d: %s", opt.Ordinal, be.info.Error)
	}
	var found []Found
	dirs := s.Dirs()
	for _, lib := range []Library{libCublasLt, libCublas, libNVRTC} {
		found = append(found, Find(lib, dirs, be.driverVer/1000))
	}
	if be.libs, err = loadLibs(found); err != nil {
		return nil, err
	}
	be.nvrtcVer = be.libs.nvrtc.versionString()
	archs, err := be.libs.nvrtc.supportedArchs()
	if err != nil {
		return nil, err
	}
	if be.arch, err = pickArch(be.info.Major, be.info.Minor, archs); err != nil {
		return nil, err
	}
	cacheDir := opt.CacheDir
	switch cacheDir {
	case "":
		cacheDir = DefaultCacheDir()
	case "-":
		cacheDir = ""
	}
	progs, err := compileAll(ctx, be.libs.nvrtc, be.arch, cacheDir)
	if err != nil {
		return nil, err
	}

	if be.dev, err = drv.device(opt.Ordinal); err != nil {
		return nil, err
	}
	if be.ctx, err = drv.retainPrimary(be.dev); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			be.release()
		}
	}()
	if err = drv.setCurrent(be.ctx); err != nil {
		return nil, err
	}
	for _, p := range progs {
		if !p.cached {
			be.compiled++
		}
		m, err := drv.loadModule(p.cubin)
		if err != nil {
			return nil, fmt.Errorf("load %s: %w", p.name, err)
		}
		be.mods = append(be.mods, m)
	}
	for name, dst := range be.fn.table() {
		var lastErr error
		for _, m := range be.mods {
			f, err := drv.function(m, name)
			if err == nil {
				*dst, lastErr = f, nil
				be.pdlFns[f] = true
				break
			}
			lastErr = err
		}
		if *dst == 0 {
			return nil, fmt.Errorf("cuda: kernel %s not found in any module: %w", name, lastErr)
		}
	}
	if be.blasH, err = be.libs.blas.newHandle(); err != nil {
		return nil, err
	}
	if err = be.checkPrecision(); err != nil {
		return nil, err
	}
	// Keep up to a quarter of the device cached; beyond that freed blocks go back.
	be.pool.limit = be.info.TotalBytes / 4
	be.initGraphs(opt.Graphs)
	return be, nil
}

// release frees what New acquired; the caller holds the thread with the context current.
func (be *Backend) release() {
	for _, h := range []*uintptr{&be.blasH, &be.blasFast} {
		if *h != 0 {
			call(be.libs.blas.destroy, *h)
			*h = 0
		}
	}
	for _, m := range be.mods {
		call(be.drv.cuModuleUnload, m)
	}
	be.mods = nil
	if be.ctx != 0 {
		_ = be.drv.releasePrimary(be.dev)
		be.ctx = 0
	}
}

// Close synchronises, frees cached memory and releases the context. Buffers still
// referenced become invalid; using the Backend after Close panics.
func (be *Backend) Close() error {
	defer be.enter()()
	if be.closed {
		return nil
	}
	err := be.drv.synchronize()
	be.closeReads()
	be.closeGraphs()
	if be.blasWS != 0 {
		_ = be.drv.memFree(be.blasWS)
	}
	be.dropHalf()
	be.closeLt()
	be.freeBlocks(be.pool.drain(0))
	for i, a := range be.scratch {
		if a != nil {
			_ = be.drv.memFree(a.ptr)
			be.scratch[i] = nil
		}
	}
	for _, u := range be.listCache {
		_ = be.drv.memFree(u.ptr)
	}
	be.listCache = nil
	be.release()
	be.closed = true
	if be.profile != nil {
		if be.profile.gpu {
			be.profile.flush()
		}
		be.profile.write(os.Stderr)
	}
	return err
}

// enter takes the Backend's lock, pins the goroutine to its thread and makes the
// context current there; the returned function undoes it. Use: defer be.enter()().
func (be *Backend) enter() func() {
	be.mu.Lock()
	runtime.LockOSThread()
	if be.closed {
		runtime.UnlockOSThread()
		be.mu.Unlock()
		panic("cuda: Backend used after Close")
	}
	if err := be.drv.setCurrent(be.ctx); err != nil {
		runtime.UnlockOSThread()
		be.mu.Unlock()
		panic(err)
	}
	if be.profile != nil && !be.profile.gpu {
		be.profile.begin(2)
	}
	return be.leave
}

func (be *Backend) leave() {
	if be.profile != nil && !be.profile.gpu && !be.closed {
		_ = be.drv.synchronize()
		be.profile.end()
	}
	runtime.UnlockOSThread()
	be.mu.Unlock()
}

// Info describes the device in use.
func (be *Backend) Info() DeviceInfo { return be.info }

// Arch is the NVRTC target the kernels were built for ("sm_90").
func (be *Backend) Arch() string { return be.arch }

// CompiledPrograms is how many kernel programs New compiled rather than found in the
// cache.
func (be *Backend) CompiledPrograms() int { return be.compiled }

// Name implements kernels.Backend.
func (be *Backend) Name() string { return fmt.Sprintf("cuda:%d", be.info.Ordinal) }

// Synchronize waits for all queued work and reports an asynchronous fault, if any.
func (be *Backend) Synchronize() error {
	defer be.enter()()
	be.notGraphed("Synchronize")
	return be.drv.synchronize()
}

// MemoryInUse returns the bytes of device memory held by live buffers and by the
// cache of freed blocks.
func (be *Backend) MemoryInUse() (live, cached uint64) {
	be.pool.mu.Lock()
	defer be.pool.mu.Unlock()
	return be.pool.live, be.pool.cached
}

// MemoryStats is the allocator's view of device memory, in bytes. Live counts blocks
// whose buffers the Go collector has not yet found dead, so it is an upper bound on
// what the program still uses (PyTorch's memory_allocated counts exact frees); Held
// adds the cache of freed blocks (PyTorch's memory_reserved). DeviceUsed is the
// driver's total minus free: every process and the contexts, cuBLAS workspaces and
// modules included (what nvidia-smi shows for the device).
type MemoryStats struct {
	Live, Cached            uint64
	PeakLive, PeakHeld      uint64 // since New or the last ResetPeakMemory
	DeviceUsed, DeviceTotal uint64
}

// MemoryStats returns the allocator's counters and the device's usage.
func (be *Backend) MemoryStats() (MemoryStats, error) {
	be.pool.mu.Lock()
	st := MemoryStats{Live: be.pool.live, Cached: be.pool.cached, PeakLive: be.pool.peakLive, PeakHeld: be.pool.peakHeld}
	be.pool.mu.Unlock()
	defer be.enter()()
	free, total, err := be.drv.memInfo()
	if err != nil {
		return st, err
	}
	st.DeviceUsed, st.DeviceTotal = total-free, total
	return st, nil
}

// HostStats are host-side costs that grow with the number of distinct step shapes,
// counted since New (callers take differences): cuBLASLt plans built (refused ones
// included; LtRefused of them fell back to GemmEx; without plan reuse each is one
// heuristic query) and the host time they took, and device allocations the block cache missed (cuMemAlloc,
// which synchronises the device). xform bench reports them over its timed updates.
type HostStats struct {
	LtPlans, LtRefused int
	LtPlanTime         time.Duration
	// Plan reuse (plan_reuse.go): heuristic queries made (one per plan without
	// reuse), plans built on their class's algorithm, class algorithms that
	// cublasLtMatmulAlgoCheck refused (a query followed), and keys answered "no plan"
	// from their kind's refusals (no plan built, not in LtPlans).
	LtQueries, LtReused, LtCheckRefused, LtSkipped int
	// Autotune (Options.Autotune, autotune.go): keys whose candidates were timed
	// (LtTuneChanged of them kept another than the heuristic's first), keys that took
	// a decision timed earlier (the GEMMTuneMemo), timings that failed (the
	// heuristic's first kept), and the host time of the timing (part of LtPlanTime).
	LtTuned, LtTuneChanged, LtTuneMemo, LtTuneFailed int
	LtTuneTime                                       time.Duration
	Allocs                                           int
	AllocBytes                                       uint64
	// DeviceWait is the host time spent blocked on the device: synchronisations,
	// event waits and device-to-host copies (which wait for the queued work).
	DeviceWait time.Duration
	// LNBackward counts the float4 LayerNorm backward launches, LNBackwardStep those
	// whose arguments take the kernels' body compiled for the training step's calls
	// (lfvStepForm).
	LNBackward, LNBackwardStep int
	// PDLLaunches counts the kernels launched with programmatic stream serialization
	// (on by default from compute capability 9.0; launch.go).
	PDLLaunches int
}

// HostStats returns the counters.
func (be *Backend) HostStats() HostStats {
	be.pool.mu.Lock()
	st := HostStats{Allocs: be.pool.allocs, AllocBytes: be.pool.allocBytes, DeviceWait: time.Duration(be.drv.waited.Load())}
	be.pool.mu.Unlock()
	defer be.enter()()
	s := &be.lt
	st.LtPlans, st.LtRefused, st.LtPlanTime = s.made, s.falls, s.planTime
	st.LtQueries, st.LtReused, st.LtCheckRefused, st.LtSkipped = s.queries, s.reused, s.checkRefused, s.skipped
	st.LtTuned, st.LtTuneChanged, st.LtTuneMemo, st.LtTuneFailed = s.tune.timed, s.tune.changed, s.tune.memo, s.tune.failed
	st.LtTuneTime = s.tune.time
	if f := be.lazy.lnFast; f != nil {
		st.LNBackward, st.LNBackwardStep = f.bwdCalls, f.bwdStep
	}
	st.PDLLaunches = be.pdlLaunches
	return st
}

// ResetPeakMemory restarts the peaks of MemoryStats from the present usage.
func (be *Backend) ResetPeakMemory() {
	be.pool.mu.Lock()
	defer be.pool.mu.Unlock()
	be.pool.peakLive, be.pool.peakHeld = be.pool.live, be.pool.live+be.pool.cached
}

// Guard recovers a panic raised by a Backend method (a *Error, *OOMError, *CompileError
// or *GraphError) into *err,
// for callers that want an error rather than a crash: defer cuda.Guard(&err).
// Other panics are re-raised.
func Guard(err *error) {
	r := recover()
	if r == nil {
		return
	}
	switch e := r.(type) {
	case *Error:
		*err = e
	case *OOMError:
		*err = e
	case *CompileError:
		*err = e
	case *GraphError:
		*err = e
	default:
		panic(r)
	}
}

// envSwitch is an Options switch that an environment variable may override: "1" turns
// it on, "0" off, anything else leaves opt (XFORM_CUDA_GRAPHS, XFORM_CUDA_AUTOTUNE).
func envSwitch(opt bool, env string) bool {
	switch env {
	case "1":
		return true
	case "0":
		return false
	}
	return opt
}
