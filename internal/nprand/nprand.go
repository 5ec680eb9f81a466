// Package nprand reproduces the parts of NumPy's legacy RandomState that fairseq uses
// to order datasets: np.random.seed(int) (MT19937 init_genrand) and permutation(n)
// (Fisher–Yates from the end with masked rejection sampling of the index).
package nprand

// State is an MT19937 generator.
type State struct {
	mt  [624]uint32
	idx int
}

// New seeds the generator as np.random.seed(seed) does for an integer seed.
func New(seed uint32) *State {
	s := &State{}
	s.mt[0] = seed
	for i := 1; i < 624; i++ {
		s.mt[i] = 1812433253*(s.mt[i-1]^(s.mt[i-1]>>30)) + uint32(i)
	}
	s.idx = 624
	return s
}

// Uint32 returns the next 32-bit output.
func (s *State) Uint32() uint32 {
	if s.idx >= 624 {
		for i := 0; i < 624; i++ {
			y := (s.mt[i] & 0x80000000) | (s.mt[(i+1)%624] & 0x7fffffff)
			v := s.mt[(i+397)%624] ^ (y >> 1)
			if y&1 != 0 {
				v ^= 0x9908b0df
			}
			s.mt[i] = v
		}
		s.idx = 0
	}
	y := s.mt[s.idx]
	s.idx++
	y ^= y >> 11
	y ^= (y << 7) & 0x9d2c5680
	y ^= (y << 15) & 0xefc60000
	y ^= y >> 18
	return y
}

// interval returns a uniform integer in [0, max] by masked rejection (NumPy's
// random_interval for max < 2^32).
func (s *State) interval(max uint32) uint32 {
	if max == 0 {
		return 0
	}
	mask := max
	mask |= mask >> 1
	mask |= mask >> 2
	mask |= mask >> 4
	mask |= mask >> 8
	mask |= mask >> 16
	for {
		if v := s.Uint32() & mask; v <= max {
			return v
		}
	}
}

// Permutation returns np.random.permutation(n) of the legacy RandomState.
func (s *State) Permutation(n int) []int {
	p := make([]int, n)
	for i := range p {
		p[i] = i
	}
	for i := n - 1; i >= 1; i-- {
		j := int(s.interval(uint32(i)))
		p[i], p[j] = p[j], p[i]
	}
	return p
}
