package cuda

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// The bookkeeping of cuBLASLt plan reuse (plan_reuse.go) and of the block cache's
// sorted classes (memory.go), without a GPU.

// ltDimClass: small values and step multiples are their own classes; every class is at
// least its value and within 1/16 of it above; classes are monotone; the bench's row
// counts 7,000–8,200 fall into a handful of classes.
func TestLtDimClass(t *testing.T) {
	for _, c := range []struct{ d, want int }{
		{1, 1}, {7, 7}, {32, 32}, {33, 34}, {64, 64}, {65, 68}, {512, 512}, {513, 544},
		{1536, 1536}, {2048, 2048}, {7000, 7168}, {7937, 8192}, {8000, 8192}, {8192, 8192},
		{8193, 8704}, {8200, 8704}, {27472, 27648},
	} {
		if got := ltDimClass(c.d); got != c.want {
			t.Errorf("ltDimClass(%d) = %d, want %d", c.d, got, c.want)
		}
	}
	prev := 0
	for d := 1; d <= 1<<17; d++ {
		c := ltDimClass(d)
		if c < d || 16*(c-d) > d || c < prev {
			t.Fatalf("ltDimClass(%d) = %d: below, more than d/16 above, or below the class of %d (%d)", d, c, d-1, prev)
		}
		if ltDimClass(c) != c {
			t.Fatalf("class %d of %d is not its own class", c, d)
		}
		prev = c
	}
	classes := map[int]bool{}
	for d := 7000; d <= 8200; d++ {
		classes[ltDimClass(d)] = true
	}
	if len(classes) != 6 {
		t.Errorf("rows 7000–8200 in %d classes, want 6", len(classes))
	}
}

// The class key rounds m, n and k and nothing else, except that a dimension bounded by
// a leading dimension stays exact where its class would pass the bound (the
// representative's layouts must be valid); the kind key drops the dimensions.
func TestLtKeys(t *testing.T) {
	// The products of a Linear with n outputs and k inputs at 8001 rows, as
	// linear16 and linearBackward16Kept plan them, each with n and k whose classes
	// are themselves (2048, 512) and not (2000, 500): the rows always go to their
	// class, n and k only where their class is theirs.
	for _, c := range []struct{ n, k, cn, ck int }{{2048, 512, 2048, 512}, {2000, 500, 2000, 500}} {
		n, k, rows := c.n, c.k, 8001
		base := ltKey{dtype: cudaR16BF, dtypeD: cudaR32F, biasType: cudaR32F, alignAB: 256, alignC: 256}
		fwd, dx, dw := base, base, base
		fwd.transB, fwd.m, fwd.n, fwd.k, fwd.lda, fwd.ldb, fwd.ldc = true, rows, n, k, k, k, n
		dx.m, dx.n, dx.k, dx.lda, dx.ldb, dx.ldc = rows, k, n, n, k, k
		dw.transA, dw.m, dw.n, dw.k, dw.lda, dw.ldb, dw.ldc = true, n, k, rows, n, k, k
		for _, kc := range []struct {
			name      string
			key       ltKey
			m, nn, kk int
		}{
			{"forward", fwd, 8192, c.cn, c.ck},
			{"dx", dx, 8192, c.ck, c.cn},
			{"dw", dw, c.cn, c.ck, 8192},
		} {
			got := kc.key.classKey()
			want := kc.key
			want.m, want.n, want.k = kc.m, kc.nn, kc.kk
			if got != want {
				t.Errorf("n %d k %d %s: classKey dims %d×%d×%d, want %d×%d×%d", n, k, kc.name, got.m, got.n, got.k, want.m, want.n, want.k)
			}
			sh := ltColMajor(got.transA, got.transB, got.m, got.n, got.k, got.lda, got.ldb, got.ldc)
			if sh.aRows > sh.aLD || sh.bRows > sh.bLD || sh.cRows > sh.cLD {
				t.Errorf("n %d k %d %s: representative layouts invalid: %+v", n, k, kc.name, sh)
			}
			if got.classKey() != got {
				t.Errorf("n %d k %d %s: the representative is not its own class", n, k, kc.name)
			}
		}
	}
	k := ltKey{transA: true, m: 2048, n: 512, k: 8001, lda: 2048, ldb: 512, ldc: 512, dtype: cudaR16BF,
		dtypeD: cudaR32F, biasType: cudaR32F, epilogue: ltEpiBGradB, alignAB: 256, alignC: 256, align: 256}
	kind := k.kindKey()
	want := k
	want.m, want.n, want.k = 0, 0, 0
	if kind != want {
		t.Errorf("kindKey = %+v, want %+v", kind, want)
	}
}

// Class entries: a key of the same class finds the kept algorithm, another class or
// another alignment does not; the latest keep wins; forget and keepNone leave a known
// class without an algorithm; past ltMaxAlgos the least recently used eighth goes.
func TestLtReuseAlgos(t *testing.T) {
	var r ltReuse
	base := ltKey{transB: true, n: 2048, k: 512, lda: 512, ldb: 512, ldc: 2048, dtype: cudaR16BF, dtypeD: cudaR16BF,
		biasType: cudaR16BF, epilogue: ltEpiReluBias, alignAB: 256, alignC: 256, align: 256}
	at := func(m int) ltKey { k := base; k.m = m; return k }
	if _, ok, known := r.algo(at(8000)); ok || known {
		t.Fatal("an algorithm before any was kept")
	}
	a1 := [8]uint64{1, 2, 3}
	r.keep(at(8000), a1)
	for _, m := range []int{7937, 8000, 8192} {
		if got, ok, known := r.algo(at(m)); !ok || !known || got != a1 {
			t.Errorf("m %d: %v, %v, %v; want the class's algorithm", m, got, ok, known)
		}
	}
	for _, m := range []int{7936, 8193} {
		if _, ok, known := r.algo(at(m)); ok || known {
			t.Errorf("m %d (another class) found an entry", m)
		}
	}
	other := at(8000)
	other.alignC = 16
	if _, _, known := r.algo(other); known {
		t.Error("another alignment class found the entry")
	}
	a2 := [8]uint64{4}
	r.keep(at(7990), a2)
	if got, _, _ := r.algo(at(8100)); got != a2 {
		t.Errorf("after a second keep: %v, want %v", got, a2)
	}
	r.forget(at(8001))
	if _, ok, known := r.algo(at(8000)); ok || !known {
		t.Errorf("after forget: ok %v, known %v; want a known class without an algorithm", ok, known)
	}
	r.forget(at(7000)) // a class without an entry stays without one
	if _, _, known := r.algo(at(7000)); known {
		t.Error("forget made an entry")
	}
	r.keepNone(at(7100))
	if _, ok, known := r.algo(at(7000)); ok || !known {
		t.Errorf("keepNone: ok %v, known %v", ok, known)
	}
	if r.kinds[at(7100).kindKey()] != nil && r.kinds[at(7100).kindKey()].refused != 0 {
		t.Error("keepNone counted a refusal")
	}

	// Eviction: fill, touch the first eighth, add one more: the untouched oldest go.
	r = ltReuse{}
	ld := func(i int) ltKey { k := at(8000); k.ldc = 1 + i; return k } // distinct classes
	for i := 0; i < ltMaxAlgos; i++ {
		r.keep(ld(i), [8]uint64{uint64(i)})
	}
	for i := 0; i < ltMaxAlgos/8; i++ {
		r.algo(ld(i))
	}
	r.keep(at(5000), a1)
	if len(r.algos) != ltMaxAlgos-ltMaxAlgos/8+1 {
		t.Fatalf("%d class entries after eviction, want %d", len(r.algos), ltMaxAlgos-ltMaxAlgos/8+1)
	}
	for i := 0; i < ltMaxAlgos; i++ {
		_, ok := r.algos[ld(i).classKey()]
		if i == 0 {
			_, _, known := r.algo(ld(ltMaxAlgos - 1))
			if !known {
				t.Fatal("the newest entry was evicted")
			}
		}
		recent := i < ltMaxAlgos/8 || i >= ltMaxAlgos/4
		if ok != recent {
			t.Fatalf("entry %d kept %v, want %v", i, ok, recent)
		}
	}
}

// Kinds: refused without asking only after ltKindRefusals distinct keys were refused
// and none accepted; the same key refused again (rebuilt after eviction) counts once;
// an acceptance, before or after, turns it off; kinds are separate.
func TestLtReuseKinds(t *testing.T) {
	var r ltReuse
	fp32Bias := ltKey{transB: true, n: 2048, k: 512, lda: 512, ldb: 512, ldc: 2048, dtype: cudaR16BF, dtypeD: cudaR16BF,
		biasType: cudaR32F, epilogue: ltEpiReluBias, alignAB: 256, alignC: 256, align: 256}
	at := func(k ltKey, m int) ltKey { k.m = m; return k }
	r.refuse(at(fp32Bias, 7000))
	r.refuse(at(fp32Bias, 7000))
	if r.skip(at(fp32Bias, 7500)) {
		t.Fatal("skipped after one key refused (twice)")
	}
	r.refuse(at(fp32Bias, 7100))
	if !r.skip(at(fp32Bias, 7500)) || !r.skip(at(fp32Bias, 64)) {
		t.Fatal("not skipped after two keys refused")
	}
	b16 := fp32Bias
	b16.biasType = cudaR16BF
	if r.skip(at(b16, 7500)) {
		t.Fatal("the 16-bit-bias kind skipped")
	}
	otherLD := at(fp32Bias, 7000)
	otherLD.n, otherLD.ldc = 203, 203
	if r.skip(otherLD) {
		t.Fatal("another leading dimension skipped")
	}
	r.keep(at(fp32Bias, 9000), [8]uint64{9})
	if r.skip(at(fp32Bias, 7500)) {
		t.Fatal("skipped after an acceptance")
	}
	r.refuse(at(fp32Bias, 7200))
	r.refuse(at(fp32Bias, 7300))
	if r.skip(at(fp32Bias, 7500)) {
		t.Fatal("skipped after refusals that followed an acceptance")
	}
}

// ltOldest returns the n least recently used keys, fewer when the map is smaller.
func TestLtOldest(t *testing.T) {
	m := map[ltKey]*ltPlan{}
	r := rand.New(rand.NewPCG(1, 2))
	used := r.Perm(100)
	for i, u := range used {
		m[ltKey{m: i + 1}] = &ltPlan{used: uint64(u)}
	}
	got := ltOldest(m, func(p *ltPlan) uint64 { return p.used }, 10)
	if len(got) != 10 {
		t.Fatalf("%d keys, want 10", len(got))
	}
	for _, k := range got {
		if m[k].used >= 10 {
			t.Errorf("key used at %d among the 10 oldest", m[k].used)
		}
	}
	if n := len(ltOldest(m, func(p *ltPlan) uint64 { return p.used }, 500)); n != 100 {
		t.Errorf("%d keys for n = 500 of 100", n)
	}
	if n := len(ltOldest(m, func(p *ltPlan) uint64 { return p.used }, -1)); n != 0 {
		t.Errorf("%d keys for n = -1", n)
	}
}

// ltPlanCap: the override, else by reuse.
func TestLtPlanCap(t *testing.T) {
	for _, c := range []struct {
		reuse bool
		plans int
		want  int
	}{{false, 0, ltMaxPlans}, {true, 0, ltMaxPlansReuse}, {true, 100, 100}, {false, 100, 100}} {
		be := &Backend{planReuse: c.reuse, ltPlans: c.plans}
		if got := be.ltPlanCap(); got != c.want {
			t.Errorf("reuse %v, XFORM_CUDA_LT_PLANS %d: %d, want %d", c.reuse, c.plans, got, c.want)
		}
	}
}

// The block cache's sorted classes stay the non-empty lists of free through random
// puts, takes and drains, and take picks what the linear scan it replaced picked: the
// own class, else the smallest cached class above it up to 1.5 times.
func TestPoolClasses(t *testing.T) {
	p := &pool{free: map[uint64][]uint64{}}
	r := rand.New(rand.NewPCG(3, 4))
	ptr := uint64(0)
	check := func(step int) {
		var want []uint64
		for c, l := range p.free {
			if len(l) > 0 {
				want = append(want, c)
			}
		}
		slices.Sort(want)
		if !slices.Equal(p.classes, want) {
			t.Fatalf("step %d: classes %v, non-empty lists %v", step, p.classes, want)
		}
	}
	scan := func(class uint64) (uint64, bool) {
		if len(p.free[class]) > 0 {
			return class, true
		}
		got := uint64(0)
		for c, l := range p.free {
			if len(l) > 0 && c > class && 2*c <= 3*class && (got == 0 || c < got) {
				got = c
			}
		}
		return got, got != 0
	}
	for step := 0; step < 20000; step++ {
		class := sizeClass(uint64(r.IntN(4 << 20)))
		switch op := r.IntN(10); {
		case op < 4:
			ptr++
			p.put(ptr, class)
			p.live += class // put subtracts it: as if the block had been handed out
		case op < 9:
			want, wantOK := scan(class)
			_, got, ok := p.take(class)
			if ok != wantOK || got != want {
				t.Fatalf("step %d: take(%d) = %d, %v; the scan gives %d, %v", step, class, got, ok, want, wantOK)
			}
		default:
			p.drain(p.cached / 2)
		}
		check(step)
	}
	p.drain(0)
	check(-1)
	if len(p.classes) != 0 || p.cached != 0 {
		t.Fatalf("after drain(0): classes %v, %d bytes cached", p.classes, p.cached)
	}
}
