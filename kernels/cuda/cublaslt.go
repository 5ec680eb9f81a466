package cuda

import (
	"errors"
	"fmt"
	"math"
	"os"
	"strings"
	"time"
	"unsafe"

	"github.com/ebitengine/purego"
)

// cuBLASLt for the 16-bit Linear and LinearBackward (precision.go). cublasGemmEx asks
// cuBLASLt's heuristic again at every call and has no bias epilogue, so a biased
// Linear cost a fill_rows launch plus a GEMM with beta = 1 that reads y back (at the
// out-projection's shape the read alone costs as much as the write). Here each product
// shape gets its matmul descriptor, layouts and algorithm once, and the bias is added
// by the GEMM's epilogue (CUBLASLT_EPILOGUE_BIAS, beta = 0): y is written once and
// never read. Anything cuBLASLt cannot do (library or symbol missing, no algorithm for
// a shape, a refusal at run time) falls back to GemmEx for that shape or for the whole
// Backend, and the first reason is kept for LtStatus.
//
// The enum values below are cublasLt.h's (CUDA 11 to 13 agree on every one used here;
// the header's values are part of cuBLASLt's ABI).

// cublasLt holds the cuBLASLt entry points used.
type cublasLt struct {
	create, destroy                      uintptr
	descCreate, descSetAttr, descDestroy uintptr
	layoutCreate, layoutDestroy          uintptr
	prefCreate, prefSetAttr, prefDestroy uintptr
	heuristic, matmul                    uintptr
	// algoCheck is cublasLtMatmulAlgoCheck, 0 when the library lacks it: plan reuse
	// (plan_reuse.go) validates a class's algorithm with it.
	algoCheck uintptr
	// layoutSetAttr is cublasLtMatrixLayoutSetAttribute, 0 when missing: strided
	// batches (gpu_batched_dw_test.go measures them for deferred weight gradients).
	layoutSetAttr uintptr
}

const (
	ltDescTransA      = 3  // CUBLASLT_MATMUL_DESC_TRANSA: int32 cublasOperation_t
	ltDescTransB      = 4  // CUBLASLT_MATMUL_DESC_TRANSB: int32
	ltDescEpilogue    = 7  // CUBLASLT_MATMUL_DESC_EPILOGUE: uint32 cublasLtEpilogue_t
	ltDescBiasPointer = 8  // CUBLASLT_MATMUL_DESC_BIAS_POINTER: device pointer
	ltDescBiasType    = 26 // CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: int32 cudaDataType

	ltPrefMaxWorkspace = 1 // CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES: uint64
	ltPrefAlignA       = 5 // CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES: uint32; B, C, D follow
	ltPrefAlignB       = 6
	ltPrefAlignC       = 7
	ltPrefAlignD       = 8

	ltEpiDefault  = 1 // CUBLASLT_EPILOGUE_DEFAULT
	ltEpiBias     = 4 // CUBLASLT_EPILOGUE_BIAS: D += bias, one value per row of D
	ltEpiReluBias = 6 // CUBLASLT_EPILOGUE_RELU_BIAS: D = max(D + bias, 0), no auxiliary output
	// CUBLASLT_EPILOGUE_BGRADB: the bias gradient of B, its sum over the GEMM's k, one
	// value per column of D, written (not accumulated) to the bias pointer in the bias
	// type. Its own bit, outside ltEpiFlagBias/ltEpiFlagBGrad (linear_act.go).
	ltEpiBGradB = 512

	// ltWorkspaceBytes is the workspace offered to every algorithm (split-K and
	// stream-K kernels want some; 32 MiB is the size cuBLAS recommends on Hopper).
	ltWorkspaceBytes = 32 << 20
	// ltMaxPlans bounds the cache of plans without plan reuse (ltMaxPlansReuse with
	// it): training batches vary m from step to step, and every m is its own layout.
	ltMaxPlans = 256
	// rtldNoload is glibc's RTLD_NOLOAD: dlopen only finds a library already loaded.
	rtldNoload = 0x4
)

// ltHeuristicResult is cublasLtMatmulHeuristicResult_t: the algorithm (an opaque
// cublasLtMatmulAlgo_t, 8 uint64), the workspace it needs, its status and wave count.
type ltHeuristicResult struct {
	algo          [8]uint64
	workspaceSize uint64
	state         int32
	wavesCount    float32
	reserved      [4]int32
}

// loadCublasLt binds cuBLASLt's entry points in the copy loadLibs opened (globally,
// before cuBLAS): dlopen by soname with RTLD_NOLOAD finds that copy and never loads
// another. blasPath orders the sonames so that cuBLAS's own major comes first.
func loadCublasLt(blasPath string) (*cublasLt, error) {
	names := append([]string(nil), libCublasLt.Names...)
	for i, n := range names {
		if strings.HasSuffix(blasPath, n[strings.LastIndex(n, ".so."):]) {
			names[0], names[i] = names[i], names[0]
			break
		}
	}
	var h uintptr
	var why []string
	for _, n := range names {
		p, err := purego.Dlopen(n, purego.RTLD_NOW|purego.RTLD_GLOBAL|rtldNoload)
		if err == nil {
			h = p
			break
		}
		why = append(why, err.Error())
	}
	if h == 0 {
		return nil, fmt.Errorf("%w: cuBLASLt is not loaded (%s)", ErrNoLibrary, strings.Join(why, "; "))
	}
	l := &cublasLt{}
	err := bind(h, "libcublasLt", []symbol{
		{"cublasLtCreate", &l.create}, {"cublasLtDestroy", &l.destroy},
		{"cublasLtMatmulDescCreate", &l.descCreate}, {"cublasLtMatmulDescSetAttribute", &l.descSetAttr},
		{"cublasLtMatmulDescDestroy", &l.descDestroy},
		{"cublasLtMatrixLayoutCreate", &l.layoutCreate}, {"cublasLtMatrixLayoutDestroy", &l.layoutDestroy},
		{"cublasLtMatmulPreferenceCreate", &l.prefCreate}, {"cublasLtMatmulPreferenceSetAttribute", &l.prefSetAttr},
		{"cublasLtMatmulPreferenceDestroy", &l.prefDestroy},
		{"cublasLtMatmulAlgoGetHeuristic", &l.heuristic}, {"cublasLtMatmul", &l.matmul},
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoLibrary, err)
	}
	// Optional: without it every new shape asks the heuristic, as before plan reuse.
	_ = bind(h, "libcublasLt", []symbol{{"cublasLtMatmulAlgoCheck", &l.algoCheck}})
	_ = bind(h, "libcublasLt", []symbol{{"cublasLtMatrixLayoutSetAttribute", &l.layoutSetAttr}})
	return l, nil
}

// ltCheck turns a cublasStatus_t into an error (cuBLASLt shares cuBLAS's codes).
func ltCheck(op string, r int32) error { return blasError(op, r) }

// ltRefusal reports whether err is cuBLASLt declining a configuration (the GemmEx
// path can still do it) rather than a failure of the device.
func ltRefusal(err error) bool {
	var e *Error
	if !errors.As(err, &e) {
		return false
	}
	switch e.Code {
	case 7, 8, 15: // INVALID_VALUE, ARCH_MISMATCH, NOT_SUPPORTED
		return true
	}
	return false
}

func (l *cublasLt) setDesc(desc uintptr, attr int, p unsafe.Pointer, size uintptr) error {
	return ltCheck("cublasLtMatmulDescSetAttribute", call(l.descSetAttr, desc, uintptr(attr), uintptr(p), size))
}

func (l *cublasLt) setPref(pref uintptr, attr int, p unsafe.Pointer, size uintptr) error {
	return ltCheck("cublasLtMatmulPreferenceSetAttribute", call(l.prefSetAttr, pref, uintptr(attr), uintptr(p), size))
}

func (l *cublasLt) newLayout(dtype uintptr, rows, cols, ld int) (uintptr, error) {
	var h uintptr
	err := ltCheck("cublasLtMatrixLayoutCreate", call(l.layoutCreate, uintptr(unsafe.Pointer(&h)), dtype,
		uintptr(rows), uintptr(cols), uintptr(ld)))
	return h, err
}

// ltShape is a row-major product C[m,n] = op(A)·op(B) as cuBLASLt's column-major one.
// A row-major matrix is its transpose in column-major, so cuBLASLt computes
// Cᵀ = op(B)ᵀ·op(A)ᵀ: its A is the caller's B and its B the caller's A, each laid out
// as stored (rows, columns, leading dimension in column-major terms), and D = C is
// n×m with the caller's ldc (as sgemmRowMajor does for cuBLAS).
type ltShape struct {
	opA, opB            int32
	aRows, aCols, aLD   int // cuBLASLt's A: the caller's B
	bRows, bCols, bLD   int // cuBLASLt's B: the caller's A
	cRows, cCols, cLD   int
	gemmM, gemmN, gemmK int // cuBLASLt's m, n, k
}

func ltColMajor(transA, transB bool, m, n, k, lda, ldb, ldc int) ltShape {
	s := ltShape{opA: opN, opB: opN, aLD: ldb, bLD: lda, cRows: n, cCols: m, cLD: ldc, gemmM: n, gemmN: m, gemmK: k}
	// The caller's B is k×n after its op; stored row-major k×n (ldb) it is n×k
	// column-major, to be transposed; stored n×k it is k×n column-major, as is.
	s.aRows, s.aCols = n, k
	if transB {
		s.opA = opT
		s.aRows, s.aCols = k, n
	}
	// The caller's A is m×k after its op, likewise.
	s.bRows, s.bCols = k, m
	if transA {
		s.opB = opT
		s.bRows, s.bCols = m, k
	}
	return s
}

// ltKey is everything a plan depends on: the product, the operand type, the epilogue
// and the alignment classes of the pointers the heuristic was told about.
type ltKey struct {
	transA, transB         bool
	m, n, k, lda, ldb, ldc int
	dtype                  uintptr
	dtypeD                 uintptr // C and D: cudaR32F, or the 16-bit dtype (half outputs)
	biasType               uintptr // the bias vector's: cudaR32F, or the 16-bit dtype
	epilogue               uint32
	alignAB, alignC, align uint32 // align: the bias pointer's class (0 without a bias)
	// The epilogue's auxiliary matrix (linear_act.go): its pointer's alignment class
	// and leading dimension (0 without one).
	alignAux uint32
	auxLD    int
}

// ltPlan is a product shape's descriptor, layouts and algorithm.
type ltPlan struct {
	desc, a, b, c uintptr
	algo          [8]uint64
	used          uint64 // ltState.clock at the last use
	none          bool   // cuBLASLt cannot do this key: GemmEx
	name          string // for XFORM_CUDA_PROFILE=gpu: shape and epilogue
	key           ltKey  // for forgetting the class's algorithm after a refusal
	// reused: the algorithm is its class's (plan_reuse.go), not the heuristic's answer
	// for this exact key. requery: that algorithm was refused at run time, so the next
	// lookup rebuilds the plan with a heuristic query.
	reused, requery bool
}

// ltState is the Backend's cuBLASLt: made at the first 16-bit Linear, released by Close.
type ltState struct {
	off    bool  // tests: always GemmEx
	tried  bool  // init ran (err says how it went)
	err    error // why cuBLASLt is not used at all (nil once it is)
	lib    *cublasLt
	handle uintptr
	ws     uint64 // workspace block (0 if it could not be allocated)
	wsSize uint64
	plans  map[ltKey]*ltPlan
	clock  uint64
	calls  int // matmuls run through cuBLASLt
	falls  int // keys that fell back to GemmEx
	// made counts the plans built (refused ones included) and planTime the host time
	// they took (kind refusals too), for HostStats: every new GEMM shape costs one per
	// product, which fairseq's batching (a new row count per batch) pays every
	// update; without plan reuse each is a heuristic query.
	made     int
	planTime time.Duration
	// Plan reuse (plan_reuse.go): its bookkeeping; heuristic queries made; plans
	// built on a class's algorithm; class algorithms the check refused; keys answered
	// "no plan" from their kind's refusals without a query.
	reuse                         ltReuse
	queries, reused, checkRefused int
	skipped                       int
	first                         error // the first reason anything fell back
	// out16Off: tests: HalfOutputs answers false, so the model keeps its float32
	// feed-forward activations (half_out.go).
	out16Off bool
	// tune counts the autotune's work (autotune.go), tuneScratch is its device memory.
	tune        ltTuneStats
	tuneScratch ltTuneScratch
	// halfOuts counts the forward products written 16-bit (linearHalfOut), halfBias16
	// those of them given a 16-bit bias, and halfFallbacks the 16-bit products that took
	// the fp32 scratch, for tests.
	halfOuts, halfBias16, halfFallbacks int
	// reluMasks counts ApplyDropoutMask's masks, reluFolds the folded dx products
	// cuBLASLt ran and reluFoldFallbacks those that took the two steps (relu_fold.go).
	reluMasks, reluFolds, reluFoldFallbacks int
}

// alignOf is the largest power of two dividing the address, up to 256 bytes (what
// cuBLASLt's alignment preferences distinguish).
func alignOf(p uint64) uint32 {
	if p == 0 {
		return 256
	}
	return uint32(min(p&-p, 256))
}

// ltNote keeps the first reason for a fallback; XFORM_CUDA_DEBUG=1 also prints it, once
// per Backend, so a run can be told which path its GEMMs take without a per-call line.
func (be *Backend) ltNote(err error) {
	s := &be.lt
	s.falls++
	if s.first != nil {
		return
	}
	s.first = err
	if os.Getenv("XFORM_CUDA_DEBUG") == "1" {
		fmt.Fprintf(os.Stderr, "cuda: 16-bit GEMMs fall back to cublasGemmEx: %v\n", err)
	}
}

// LtStatus says whether the 16-bit Linear and LinearBackward run through cuBLASLt: how
// many product shapes are planned and matmuls were run, and the first reason anything
// fell back to cublasGemmEx (for logs and debugging; XFORM_CUDA_DEBUG=1 prints that
// reason when it happens).
func (be *Backend) LtStatus() string {
	be.mu.Lock()
	defer be.mu.Unlock()
	s := &be.lt
	switch {
	case be.precision == FP32:
		return "cuBLASLt unused: fp32 GEMMs use cublasSgemm"
	case s.off:
		return "cuBLASLt turned off"
	case !s.tried:
		return "cuBLASLt not used yet"
	case s.err != nil:
		return fmt.Sprintf("cuBLASLt unused: %v", s.err)
	}
	msg := fmt.Sprintf("cuBLASLt: %d plans, %d matmuls, workspace %s", len(s.plans), s.calls, fmtBytes(s.wsSize))
	if be.planReuse {
		msg += fmt.Sprintf("; plan reuse: %d heuristic queries, %d plans on a class's algorithm (%d checks refused), %d kind refusals",
			s.queries, s.reused, s.checkRefused, s.skipped)
		if s.lib != nil && s.lib.algoCheck == 0 {
			msg += ", cublasLtMatmulAlgoCheck missing"
		}
	}
	if be.autotune {
		t := s.tune
		msg += fmt.Sprintf("; autotune: %d keys timed (%d not the heuristic's first, %d failed) in %.1f ms, %d taken from earlier timing",
			t.timed, t.changed, t.failed, t.time.Seconds()*1e3, t.memo)
	}
	if s.first != nil {
		msg += fmt.Sprintf("; %d fallbacks to GemmEx, first: %v", s.falls, s.first)
	}
	return msg
}

// ltReady makes the handle and the workspace at the first use (the caller holds the
// Backend); false when cuBLASLt is not to be used.
func (be *Backend) ltReady() bool {
	s := &be.lt
	if s.off {
		return false
	}
	if !s.tried {
		s.tried = true
		if s.err = be.ltInit(); s.err != nil {
			be.ltNote(s.err)
		}
	}
	return s.err == nil
}

func (be *Backend) ltInit() error {
	if os.Getenv("XFORM_CUDA_LT") == "0" {
		return errors.New("cuBLASLt turned off by XFORM_CUDA_LT=0")
	}
	lib, err := loadCublasLt(be.libs.blas.path)
	if err != nil {
		return err
	}
	var h uintptr
	if err := ltCheck("cublasLtCreate", call(lib.create, uintptr(unsafe.Pointer(&h)))); err != nil {
		return err
	}
	s := &be.lt
	s.lib, s.handle, s.plans = lib, h, map[ltKey]*ltPlan{}
	// Without a workspace cuBLASLt still has algorithms, only fewer; so a failed
	// allocation is not a reason to give up.
	if p, err := be.drv.memAlloc(ltWorkspaceBytes); err == nil {
		s.ws, s.wsSize = p, ltWorkspaceBytes
	}
	return nil
}

// ltPlanFor returns the plan of a row-major product of 16-bit copies (256-byte
// aligned, from cast16) into fp32 c, with the bias epilogue when bias is not 0; nil
// when the GemmEx path must do it. The caller holds the Backend.
func (be *Backend) ltPlanFor(transA, transB bool, m, n, k, lda, ldb, ldc int, c, bias uint64) *ltPlan {
	epi := uint32(ltEpiDefault)
	if bias != 0 {
		epi = ltEpiBias
	}
	return be.ltPlanEpi(transA, transB, m, n, k, lda, ldb, ldc, c, epi, bias, 0, 0)
}

// ltPlanEpi is ltPlanFor with any epilogue: bias is the epilogue's bias (or bias
// gradient) vector, aux its auxiliary matrix with leading dimension auxLD (0 when the
// epilogue has none).
func (be *Backend) ltPlanEpi(transA, transB bool, m, n, k, lda, ldb, ldc int, c uint64, epi uint32, bias, aux uint64, auxLD int) *ltPlan {
	return be.ltPlanD(transA, transB, m, n, k, lda, ldb, ldc, c, epi, bias, aux, auxLD, cudaR32F)
}

// ltPlanD is ltPlanEpi with C and D of type dtypeD: cudaR32F, or dataType16 for a
// product written in 16 bits (half_out.go). The fp32 accumulation (computeF32) and the
// fp32 bias are the same either way; only the store rounds.
func (be *Backend) ltPlanD(transA, transB bool, m, n, k, lda, ldb, ldc int, c uint64, epi uint32, bias, aux uint64, auxLD int, dtypeD uintptr) *ltPlan {
	return be.ltPlanDB(transA, transB, m, n, k, lda, ldb, ldc, c, epi, bias, aux, auxLD, dtypeD, cudaR32F)
}

// ltPlanDB is ltPlanD with a bias vector of type biasType (cuBLASLt may take a 16-bit D
// only with a bias of D's type).
func (be *Backend) ltPlanDB(transA, transB bool, m, n, k, lda, ldb, ldc int, c uint64, epi uint32, bias, aux uint64, auxLD int, dtypeD, biasType uintptr) *ltPlan {
	if m == 0 || n == 0 || k == 0 || !be.ltReady() {
		return nil
	}
	key := ltKey{transA: transA, transB: transB, m: m, n: n, k: k, lda: lda, ldb: ldb, ldc: ldc,
		dtype: be.dataType16(), dtypeD: dtypeD, biasType: biasType, epilogue: epi, alignAB: halfAlign, alignC: alignOf(c)}
	if bias != 0 {
		key.align = alignOf(bias)
	}
	if aux != 0 {
		key.alignAux, key.auxLD = alignOf(aux), auxLD
	}
	s := &be.lt
	s.clock++
	p := s.plans[key]
	requery := false
	if p != nil && p.requery {
		delete(s.plans, key)
		p, requery = nil, true
	}
	if p == nil {
		if capacity := be.ltPlanCap(); len(s.plans) >= capacity {
			n := len(s.plans) - capacity + 1
			if be.planReuse {
				// An eighth more at once: with reuse a miss is cheap, and a scan of
				// the cache per miss would cost as much as the plan.
				n += capacity / 8
			}
			be.ltEvict(n)
		}
		t0 := time.Now()
		if be.planReuse && s.reuse.skip(key) {
			s.skipped++
			p = &ltPlan{none: true}
		} else {
			var err error
			p, err = be.ltNewPlan(key, bias, aux, be.planReuse && !requery)
			s.made++
			if err == nil {
				p.name = fmt.Sprintf("cublasLt %dx%dx%d t%v%v epi%d", m, n, k, b2u(transA), b2u(transB), epi)
				if dtypeD != cudaR32F {
					p.name += " d16"
				}
				if biasType != cudaR32F && bias != 0 {
					p.name += " b16"
				}
			} else {
				if be.planReuse && ltPlanRefused(err) {
					s.reuse.refuse(key)
				}
				be.ltNote(fmt.Errorf("%d×%d×%d (transposes %v %v, epilogue %d): %w", m, n, k, transA, transB, key.epilogue, err))
				p = &ltPlan{none: true}
			}
		}
		s.planTime += time.Since(t0)
		s.plans[key] = p
	}
	p.used = s.clock
	if p.none {
		return nil
	}
	return p
}

// ltNewPlan makes the descriptor and layouts of key and gives them an algorithm: with
// reuse, its class's (the heuristic's for the class's representative, asked at the
// class's first key) when cublasLtMatmulAlgoCheck accepts it for this exact shape,
// else the heuristic's best for key within the workspace and the pointers' alignment.
func (be *Backend) ltNewPlan(key ltKey, bias, aux uint64, reuse bool) (_ *ltPlan, err error) {
	s := &be.lt
	p := &ltPlan{key: key}
	defer func() {
		if err != nil {
			be.ltDestroy(p)
		}
	}()
	if err := be.ltBuild(p, key, bias, aux); err != nil {
		return nil, err
	}
	// A key that is its class's representative asks for itself (below), and its
	// answer is the class's.
	rep := key.classKey() == key
	if reuse && s.lib.algoCheck != 0 && !rep {
		algo, ok, known := s.reuse.algo(key)
		if !known {
			algo, ok = be.ltClassAlgo(key, bias, aux)
		}
		if ok {
			if be.ltAlgoFits(p, algo) {
				p.algo, p.reused = algo, true
				s.reused++
				return p, nil
			}
			s.checkRefused++
		}
	}
	s.queries++
	if p.algo, err = be.ltChoose(p, key, bias); err != nil {
		if reuse && rep {
			s.reuse.keepNone(key)
		}
		return nil, err
	}
	if reuse && rep {
		s.reuse.keep(key, p.algo)
	} else if reuse {
		s.reuse.accept(key)
	}
	return p, nil
}

// ltBuild makes p's descriptor (transposes, epilogue, bias and auxiliary pointers) and
// its layouts for key.
func (be *Backend) ltBuild(p *ltPlan, key ltKey, bias, aux uint64) (err error) {
	l := be.lt.lib
	sh := ltColMajor(key.transA, key.transB, key.m, key.n, key.k, key.lda, key.ldb, key.ldc)
	if err := ltCheck("cublasLtMatmulDescCreate", call(l.descCreate, uintptr(unsafe.Pointer(&p.desc)), computeF32, cudaR32F)); err != nil {
		return err
	}
	epi := key.epilogue
	for _, a := range []struct {
		attr int
		p    unsafe.Pointer
		size uintptr
	}{
		{ltDescTransA, unsafe.Pointer(&sh.opA), 4},
		{ltDescTransB, unsafe.Pointer(&sh.opB), 4},
		{ltDescEpilogue, unsafe.Pointer(&epi), 4},
	} {
		if err := l.setDesc(p.desc, a.attr, a.p, a.size); err != nil {
			return err
		}
	}
	if epi&(ltEpiFlagBias|ltEpiFlagBGrad|ltEpiBGradB) != 0 {
		// fp32 bias (or bias gradient), as D, and also for a 16-bit D: the bias is
		// added to the fp32 accumulator before the one rounding of the store. The
		// heuristic reads the pointer's alignment from it.
		bt := int32(key.biasType)
		if err := l.setDesc(p.desc, ltDescBiasType, unsafe.Pointer(&bt), 4); err != nil {
			return err
		}
		if err := l.setDesc(p.desc, ltDescBiasPointer, unsafe.Pointer(&bias), 8); err != nil {
			return err
		}
	}
	if epi&ltEpiFlagAux != 0 {
		ld := int64(key.auxLD)
		if err := l.setDesc(p.desc, ltDescAuxLD, unsafe.Pointer(&ld), 8); err != nil {
			return err
		}
		if err := l.setDesc(p.desc, ltDescAuxPointer, unsafe.Pointer(&aux), 8); err != nil {
			return err
		}
	}
	if p.a, err = l.newLayout(key.dtype, sh.aRows, sh.aCols, sh.aLD); err != nil {
		return err
	}
	if p.b, err = l.newLayout(key.dtype, sh.bRows, sh.bCols, sh.bLD); err != nil {
		return err
	}
	if p.c, err = l.newLayout(key.dtypeD, sh.cRows, sh.cCols, sh.cLD); err != nil {
		return err
	}
	return nil
}

// ltHeuristic asks cuBLASLt's heuristic for the best algorithm of p's descriptor and
// layouts within the workspace and key's pointer alignments.
func (be *Backend) ltHeuristic(p *ltPlan, key ltKey) ([8]uint64, error) {
	res, err := be.ltHeuristicN(p, key, 1)
	if err != nil {
		return [8]uint64{}, err
	}
	return res[0].algo, nil
}

// ltHeuristicN asks the heuristic for up to n results and returns the usable ones
// (state 0, workspace within ours) in its order; errLtNoAlgo when there is none.
func (be *Backend) ltHeuristicN(p *ltPlan, key ltKey, n int) ([]ltHeuristicResult, error) {
	s := &be.lt
	l := s.lib
	var pref uintptr
	if err := ltCheck("cublasLtMatmulPreferenceCreate", call(l.prefCreate, uintptr(unsafe.Pointer(&pref)))); err != nil {
		return nil, err
	}
	defer call(l.prefDestroy, pref)
	ws := s.wsSize
	if err := l.setPref(pref, ltPrefMaxWorkspace, unsafe.Pointer(&ws), 8); err != nil {
		return nil, err
	}
	// The defaults assume 256-byte aligned matrices; a Slice of a buffer can start on
	// any float, and an algorithm chosen for 256 bytes would fault on it.
	for _, a := range []struct {
		attr  int
		align uint32
	}{{ltPrefAlignA, key.alignAB}, {ltPrefAlignB, key.alignAB}, {ltPrefAlignC, key.alignC}, {ltPrefAlignD, key.alignC}} {
		v := a.align
		if err := l.setPref(pref, a.attr, unsafe.Pointer(&v), 4); err != nil {
			return nil, err
		}
	}
	res := make([]ltHeuristicResult, max(n, 1))
	var got int32
	if err := ltCheck("cublasLtMatmulAlgoGetHeuristic", call(l.heuristic, s.handle, p.desc, p.a, p.b, p.c, p.c, pref,
		uintptr(len(res)), uintptr(unsafe.Pointer(&res[0])), uintptr(unsafe.Pointer(&got)))); err != nil {
		return nil, err
	}
	res = res[:min(max(int(got), 0), len(res))]
	ok := res[:0]
	for _, r := range res {
		if r.state == 0 && r.workspaceSize <= s.wsSize {
			ok = append(ok, r)
		}
	}
	if len(ok) == 0 {
		state := int32(0)
		if len(res) > 0 {
			state = res[0].state
		}
		return nil, fmt.Errorf("%w (%d results, state %d)", errLtNoAlgo, got, state)
	}
	return ok, nil
}

// ltRun computes c = a·b (row-major, as planned) + beta·c, plus the bias through the
// epilogue when the plan has it. false when cuBLASLt refused at run time: the plan is
// then marked for GemmEx and the caller does the product there.
func (be *Backend) ltRun(p *ltPlan, a, b uint64, beta float32, c, bias uint64) bool {
	return be.ltRunScaled(p, 1, a, b, beta, c, bias)
}

// ltRunScaled is ltRun with the product scaled by alpha (D = alpha·op(A)op(B) + beta·C
// before the epilogue).
func (be *Backend) ltRunScaled(p *ltPlan, alpha float32, a, b uint64, beta float32, c, bias uint64) bool {
	s := &be.lt
	l := s.lib
	if bias != 0 {
		// The descriptor is read when the matmul is enqueued, so pointing the cached
		// one at this call's bias cannot change work already queued.
		must(l.setDesc(p.desc, ltDescBiasPointer, unsafe.Pointer(&bias), 8))
	}
	var err error
	sig := []uint64{3, uint64(p.desc), a, b, uint64(math.Float32bits(beta)), c, bias}
	if alpha != 1 {
		sig = append(sig, uint64(math.Float32bits(alpha)))
	}
	be.blasCall(p.name, sig,
		func(stream uintptr) error {
			err = ltCheck("cublasLtMatmul", call(l.matmul, s.handle, p.desc, uintptr(unsafe.Pointer(&alpha)),
				uintptr(b), p.a, uintptr(a), p.b, uintptr(unsafe.Pointer(&beta)), uintptr(c), p.c, uintptr(c), p.c,
				uintptr(unsafe.Pointer(&p.algo)), uintptr(s.ws), uintptr(s.wsSize), stream))
			if err != nil && ltRefusal(err) {
				return nil // handled below: the plan falls back to GemmEx
			}
			return err
		})
	if err != nil {
		if !ltRefusal(err) {
			panic(err)
		}
		be.ltDestroy(p)
		if p.reused {
			// The class's algorithm passed cublasLtMatmulAlgoCheck but not the matmul:
			// forget it, and let the next call of this key ask the heuristic rather
			// than take GemmEx for good.
			be.lt.reuse.forget(p.key)
			*p = ltPlan{none: true, used: p.used, requery: true}
		} else {
			*p = ltPlan{none: true, used: p.used}
		}
		be.ltNote(err)
		return false
	}
	s.calls++
	if be.syncCheck {
		must(be.drv.synchronize())
	}
	return true
}

// ltEvict drops the n least recently used plans. Plans handed out by the calling
// operation's earlier lookups (at most three) are the most recent, and the eight most
// recent always stay.
func (be *Backend) ltEvict(n int) {
	s := &be.lt
	n = min(n, len(s.plans)-ltKeepRecent)
	for _, k := range ltOldest(s.plans, func(p *ltPlan) uint64 { return p.used }, n) {
		be.ltDestroy(s.plans[k])
		delete(s.plans, k)
	}
}

// ltDestroy frees a plan's descriptors (host objects: no work in flight uses them).
func (be *Backend) ltDestroy(p *ltPlan) {
	l := be.lt.lib
	for _, h := range []*uintptr{&p.a, &p.b, &p.c} {
		if *h != 0 {
			call(l.layoutDestroy, *h)
			*h = 0
		}
	}
	if p.desc != 0 {
		call(l.descDestroy, p.desc)
		p.desc = 0
	}
}

// closeLt releases the plans, the handle and the workspace (Close, after it has
// synchronised).
func (be *Backend) closeLt() {
	s := &be.lt
	if s.lib == nil {
		return
	}
	for k, p := range s.plans {
		be.ltDestroy(p)
		delete(s.plans, k)
	}
	for k, p := range be.dwDefer.plans {
		be.ltDestroy(p)
		delete(be.dwDefer.plans, k)
	}
	if s.handle != 0 {
		call(s.lib.destroy, s.handle)
		s.handle = 0
	}
	be.closeTune()
	if s.ws != 0 {
		_ = be.drv.memFree(s.ws)
		s.ws, s.wsSize = 0, 0
	}
	s.err = errors.New("closed")
}
