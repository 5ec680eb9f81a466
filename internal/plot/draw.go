package plot

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"math"
	"sort"
	"strconv"
)

// Series is one line of a panel.
type Series struct {
	Name   string
	Points []Point
	Color  color.RGBA
	// Label draws Name at the line's right end instead of in the legend (for panels
	// with many lines, such as ω per sub-layer).
	Label bool
}

// Panel is one chart: a title and its lines over the update axis.
type Panel struct {
	Title  string
	Series []Series
}

// Palette holds distinguishable line colours.
var Palette = []color.RGBA{
	{31, 119, 180, 255}, {214, 39, 40, 255}, {44, 160, 44, 255}, {255, 127, 14, 255}, {148, 103, 189, 255},
	{140, 86, 75, 255}, {227, 119, 194, 255}, {127, 127, 127, 255}, {188, 189, 34, 255}, {23, 190, 207, 255},
}

var (
	white = color.RGBA{255, 255, 255, 255}
	ink   = color.RGBA{30, 30, 30, 255}
	grid  = color.RGBA{225, 225, 225, 255}
)

// Figure lays out the standard training panels for a log: losses, learning rate, and
// the extra panels given (ω over checkpoints).
func Figure(l *Log, extra ...Panel) []Panel {
	var ps []Panel
	loss := Panel{Title: "loss (bits) over updates"}
	if tr := l.Train(); len(tr) > 0 {
		loss.Series = append(loss.Series, Series{Name: "train", Points: tr, Color: Palette[0]})
	}
	if len(l.Valid) > 0 {
		loss.Series = append(loss.Series, Series{Name: "valid", Points: l.Valid, Color: Palette[1]})
	}
	ps = append(ps, loss)
	if len(l.LR) > 0 {
		ps = append(ps, Panel{Title: "learning rate over updates", Series: []Series{{Name: "lr", Points: l.LR, Color: Palette[2]}}})
	}
	return append(ps, extra...)
}

// Render draws the panels stacked vertically, each panelHeight pixels high.
func Render(panels []Panel, width, panelHeight int) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, width, panelHeight*len(panels)))
	draw.Draw(img, img.Bounds(), &image.Uniform{white}, image.Point{}, draw.Src)
	for i, p := range panels {
		drawPanel(img, image.Rect(0, i*panelHeight, width, (i+1)*panelHeight), p)
	}
	return img
}

// drawPanel draws one chart into r: title, axes with ticks and labels, grid, lines,
// legend.
func drawPanel(img *image.RGBA, r image.Rectangle, p Panel) {
	labelRoom := 0
	for _, s := range p.Series {
		if s.Label {
			labelRoom = max(labelRoom, textWidth(s.Name)+8)
		}
	}
	plot := image.Rect(r.Min.X+80, r.Min.Y+30, r.Max.X-20-labelRoom, r.Max.Y-40)
	drawText(img, r.Min.X+80, r.Min.Y+10, p.Title, ink)
	x0, x1, y0, y1, ok := bounds(p.Series)
	if !ok {
		drawText(img, plot.Min.X+10, plot.Min.Y+10, "no data", ink)
		return
	}
	xt := ticks(x0, x1, 8)
	yt := ticks(y0, y1, 6)
	x0, x1 = math.Min(x0, xt[0]), math.Max(x1, xt[len(xt)-1])
	y0, y1 = math.Min(y0, yt[0]), math.Max(y1, yt[len(yt)-1])
	px := func(v float64) int {
		return plot.Min.X + int(math.Round((v-x0)/(x1-x0)*float64(plot.Dx())))
	}
	py := func(v float64) int {
		return plot.Max.Y - int(math.Round((v-y0)/(y1-y0)*float64(plot.Dy())))
	}
	for _, v := range xt {
		x := px(v)
		line(img, x, plot.Min.Y, x, plot.Max.Y, grid, 1)
		line(img, x, plot.Max.Y, x, plot.Max.Y+5, ink, 1)
		s := tickLabel(v, xt)
		drawText(img, x-textWidth(s)/2, plot.Max.Y+9, s, ink)
	}
	for _, v := range yt {
		y := py(v)
		line(img, plot.Min.X, y, plot.Max.X, y, grid, 1)
		line(img, plot.Min.X-5, y, plot.Min.X, y, ink, 1)
		s := tickLabel(v, yt)
		drawText(img, plot.Min.X-9-textWidth(s), y-textHeight/2, s, ink)
	}
	drawText(img, plot.Max.X-textWidth("updates"), plot.Max.Y+24, "updates", ink)
	line(img, plot.Min.X, plot.Max.Y, plot.Max.X, plot.Max.Y, ink, 1)
	line(img, plot.Min.X, plot.Min.Y, plot.Min.X, plot.Max.Y, ink, 1)

	lx := plot.Max.X - 10
	ly := plot.Min.Y + 8
	type label struct {
		y    int
		x    int
		text string
		c    color.RGBA
	}
	var labels []label
	for _, s := range p.Series {
		for k := 1; k < len(s.Points); k++ {
			a, b := s.Points[k-1], s.Points[k]
			line(img, px(float64(a.Update)), py(a.Value), px(float64(b.Update)), py(b.Value), s.Color, 2)
		}
		if len(s.Points) == 1 || len(s.Points) < 40 { // mark sparse points
			for _, q := range s.Points {
				dot(img, px(float64(q.Update)), py(q.Value), s.Color)
			}
		}
		if s.Label {
			if len(s.Points) > 0 {
				last := s.Points[len(s.Points)-1]
				labels = append(labels, label{py(last.Value) - textHeight/2, px(float64(last.Update)) + 6, s.Name, s.Color})
			}
			continue
		}
		w := textWidth(s.Name)
		line(img, lx-w-30, ly+textHeight/2, lx-w-8, ly+textHeight/2, s.Color, 3)
		drawText(img, lx-w, ly, s.Name, ink)
		ly += textHeight + 8
	}
	// End-of-line labels: push overlapping ones apart, keeping their order.
	sort.Slice(labels, func(i, j int) bool { return labels[i].y < labels[j].y })
	for i := 1; i < len(labels); i++ {
		labels[i].y = max(labels[i].y, labels[i-1].y+textHeight+3)
	}
	if n := len(labels); n > 0 && labels[n-1].y+textHeight > r.Max.Y {
		shift := labels[n-1].y + textHeight - r.Max.Y
		for i := range labels {
			labels[i].y -= shift
		}
	}
	for _, l := range labels {
		drawText(img, l.x, l.y, l.text, l.c)
	}
}

func bounds(ss []Series) (x0, x1, y0, y1 float64, ok bool) {
	x0, y0 = math.Inf(1), math.Inf(1)
	x1, y1 = math.Inf(-1), math.Inf(-1)
	for _, s := range ss {
		for _, p := range s.Points {
			if math.IsNaN(p.Value) || math.IsInf(p.Value, 0) {
				continue
			}
			x0, x1 = math.Min(x0, float64(p.Update)), math.Max(x1, float64(p.Update))
			y0, y1 = math.Min(y0, p.Value), math.Max(y1, p.Value)
			ok = true
		}
	}
	if !ok {
		return 0, 0, 0, 0, false
	}
	if x1 == x0 {
		x0, x1 = x0-1, x1+1
	}
	if y1 == y0 {
		d := math.Max(math.Abs(y0)*0.1, 1e-9)
		y0, y1 = y0-d, y1+d
	}
	return x0, x1, y0, y1, true
}

// ticks returns about n round tick values (1, 2 or 5 × 10^k apart) covering [lo, hi].
func ticks(lo, hi float64, n int) []float64 {
	raw := (hi - lo) / float64(n)
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := mag
	for _, m := range []float64{1, 2, 5, 10} {
		if m*mag >= raw {
			step = m * mag
			break
		}
	}
	start := math.Floor(lo/step) * step
	var out []float64
	for v := start; v <= hi+step*0.999; v += step {
		out = append(out, math.Round(v/step)*step)
	}
	return out
}

// tickLabel formats v with as many decimals as the tick spacing needs.
func tickLabel(v float64, all []float64) string {
	step := 1.0
	if len(all) > 1 {
		step = all[1] - all[0]
	}
	if math.Abs(v) < step/2 {
		return "0"
	}
	if step < 1e-3 || math.Abs(v) >= 1e6 {
		return strconv.FormatFloat(v, 'g', 3, 64)
	}
	dec := max(0, int(math.Ceil(-math.Log10(step)-1e-9)))
	return fmt.Sprintf("%.*f", dec, v)
}

// line draws a segment of the given thickness (Bresenham, squares of thick pixels).
func line(img *image.RGBA, x0, y0, x1, y1 int, c color.RGBA, thick int) {
	dx, dy := abs(x1-x0), -abs(y1-y0)
	sx, sy := 1, 1
	if x0 > x1 {
		sx = -1
	}
	if y0 > y1 {
		sy = -1
	}
	e := dx + dy
	for {
		for i := 0; i < thick; i++ {
			for j := 0; j < thick; j++ {
				img.SetRGBA(x0+i-thick/2, y0+j-thick/2, c)
			}
		}
		if x0 == x1 && y0 == y1 {
			return
		}
		e2 := 2 * e
		if e2 >= dy {
			e += dy
			x0 += sx
		}
		if e2 <= dx {
			e += dx
			y0 += sy
		}
	}
}

func dot(img *image.RGBA, x, y int, c color.RGBA) {
	for i := -2; i <= 2; i++ {
		for j := -2; j <= 2; j++ {
			if i*i+j*j <= 5 {
				img.SetRGBA(x+i, y+j, c)
			}
		}
	}
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}
