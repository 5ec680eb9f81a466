package generate

// torchSortDesc returns the permutation that torch.sort(keys, descending=True) gives
// on CPU for a 1-D tensor: libstdc++'s std::sort (introsort: median-of-three
// quicksort down to 16-element runs, heapsort past 2·log2(n) levels, then insertion
// sort) over (key, index) pairs compared by key only. Ties therefore come out in an
// order that depends on the algorithm, and fairseq's collater inherits it; this is the
// same algorithm step for step so the order matches the reference's.
func torchSortDesc(keys []int) []int {
	n := len(keys)
	type kv struct{ k, v int }
	a := make([]kv, n)
	for i, k := range keys {
		a[i] = kv{k, i}
	}
	less := func(x, y kv) bool { return x.k > y.k } // descending comparator
	const threshold = 16

	var insertion func(lo, hi int)
	unguardedLinearInsert := func(last int) {
		val := a[last]
		next := last - 1
		for less(val, a[next]) {
			a[last] = a[next]
			last = next
			next--
		}
		a[last] = val
	}
	insertion = func(lo, hi int) {
		if lo == hi {
			return
		}
		for i := lo + 1; i < hi; i++ {
			if less(a[i], a[lo]) {
				val := a[i]
				copy(a[lo+1:i+1], a[lo:i])
				a[lo] = val
			} else {
				unguardedLinearInsert(i)
			}
		}
	}
	// Heap helpers (std::__adjust_heap / __push_heap) on a[lo:hi].
	var adjust func(lo, hole, length int, val kv)
	adjust = func(lo, hole, length int, val kv) {
		top := hole
		child := hole
		for child < (length-1)/2 {
			child = 2 * (child + 1)
			if less(a[lo+child], a[lo+child-1]) {
				child--
			}
			a[lo+hole] = a[lo+child]
			hole = child
		}
		if length&1 == 0 && child == (length-2)/2 {
			child = 2 * (child + 1)
			a[lo+hole] = a[lo+child-1]
			hole = child - 1
		}
		parent := (hole - 1) / 2
		for hole > top && less(a[lo+parent], val) {
			a[lo+hole] = a[lo+parent]
			hole = parent
			parent = (hole - 1) / 2
		}
		a[lo+hole] = val
	}
	heapSort := func(lo, hi int) {
		length := hi - lo
		if length >= 2 {
			for parent := (length - 2) / 2; ; parent-- {
				adjust(lo, parent, length, a[lo+parent])
				if parent == 0 {
					break
				}
			}
		}
		for last := hi; last-lo > 1; {
			last--
			val := a[last]
			a[last] = a[lo]
			adjust(lo, 0, last-lo, val)
		}
	}
	moveMedianToFirst := func(result, x, y, z int) {
		switch {
		case less(a[x], a[y]):
			switch {
			case less(a[y], a[z]):
				a[result], a[y] = a[y], a[result]
			case less(a[x], a[z]):
				a[result], a[z] = a[z], a[result]
			default:
				a[result], a[x] = a[x], a[result]
			}
		case less(a[x], a[z]):
			a[result], a[x] = a[x], a[result]
		case less(a[y], a[z]):
			a[result], a[z] = a[z], a[result]
		default:
			a[result], a[y] = a[y], a[result]
		}
	}
	partition := func(first, last, pivot int) int {
		for {
			for less(a[first], a[pivot]) {
				first++
			}
			last--
			for less(a[pivot], a[last]) {
				last--
			}
			if first >= last {
				return first
			}
			a[first], a[last] = a[last], a[first]
			first++
		}
	}
	var introsort func(lo, hi, depth int)
	introsort = func(lo, hi, depth int) {
		for hi-lo > threshold {
			if depth == 0 {
				heapSort(lo, hi)
				return
			}
			depth--
			mid := lo + (hi-lo)/2
			moveMedianToFirst(lo, lo+1, mid, hi-1)
			cut := partition(lo+1, hi, lo)
			introsort(cut, hi, depth)
			hi = cut
		}
	}
	if n > 1 {
		lg := 0
		for x := n; x > 1; x >>= 1 {
			lg++
		}
		introsort(0, n, 2*lg)
		if n > threshold {
			insertion(0, threshold)
			for i := threshold; i < n; i++ {
				unguardedLinearInsert(i)
			}
		} else {
			insertion(0, n)
		}
	}
	out := make([]int, n)
	for i, e := range a {
		out[i] = e.v
	}
	return out
}
