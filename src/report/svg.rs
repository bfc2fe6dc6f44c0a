//! Self-contained SVG plots: line plots, grouped bar charts and scatter plots.
//!
//! One style for all: white background, light grid, 12px sans-serif text, the Okabe–Ito
//! colour-blind-friendly palette, a legend row under the title, and 1-2-5 tick values spaced so
//! their labels never overlap. Non-finite values are skipped; empty input, a single point and
//! constant values all give a readable plot.

use crate::error::Result;
use crate::fsio::write_atomic;
use std::fmt::Write as _;
use std::path::Path;

/// Okabe–Ito palette without its yellow, which is too pale on white.
pub const PALETTE: [&str; 7] = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000"];

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 450.0;
const BAR_PLOT_HEIGHT: f64 = 300.0;
const RIGHT: f64 = 24.0;
const GRID: &str = "#e6e6e6";
const INK: &str = "#333";

/// How a line-plot series is drawn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SeriesStyle {
    #[default]
    Line,
    Points,
    LineAndPoints,
}

/// A named sequence of `(x, y)` points.
#[derive(Clone, Debug, Default)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub style: SeriesStyle,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>, style: SeriesStyle) -> Series {
        Series { name: name.into(), points, style }
    }
    pub fn line(name: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series::new(name, points, SeriesStyle::Line)
    }
}

/// Lines and/or points against numeric x, with optional labelled horizontal reference lines.
#[derive(Clone, Debug, Default)]
pub struct LinePlot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// `(y, label)`: dashed reference lines, e.g. the reward of uniform pruning.
    pub hlines: Vec<(f64, String)>,
}

/// Grouped bars: one group per category, one bar per series in each group.
#[derive(Clone, Debug, Default)]
pub struct BarChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub categories: Vec<String>,
    /// `(name, one value per category)`.
    pub series: Vec<(String, Vec<f64>)>,
}

/// Points without lines, with an optional note (e.g. a correlation) shown under the title.
#[derive(Clone, Debug, Default)]
pub struct ScatterPlot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub points: Vec<(f64, f64)>,
    pub annotation: Option<String>,
}

impl LinePlot {
    pub fn new(title: impl Into<String>, x_label: impl Into<String>, y_label: impl Into<String>) -> Self {
        LinePlot { title: title.into(), x_label: x_label.into(), y_label: y_label.into(), ..Self::default() }
    }
    pub fn with_series(mut self, series: Series) -> Self {
        self.series.push(series);
        self
    }
    pub fn with_hline(mut self, y: f64, label: impl Into<String>) -> Self {
        self.hlines.push((y, label.into()));
        self
    }

    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        write_atomic(path, self.to_svg().as_bytes())
    }

    pub fn to_svg(&self) -> String {
        let pts = || self.series.iter().flat_map(|s| &s.points).copied().filter(|&p| finite(p));
        let hl = || self.hlines.iter().map(|h| h.0).filter(|v| v.is_finite());
        let mut c = Canvas::new(WIDTH, HEIGHT, &self.title);
        let items: Vec<Item> = (self.series.iter().enumerate())
            .map(|(i, s)| Item { text: &s.name, key: Some((i, Key::Series(s.style))) })
            .collect();
        let top = c.legend(&items);
        let x = Span::of(pts().map(|p| p.0), 0.02);
        let y = Span::of(pts().map(|p| p.1).chain(hl()), 0.05);
        let f = c.frame(top, 46.0, 0.0, Some(x), y, (&self.x_label, &self.y_label));
        for (i, s) in self.series.iter().enumerate() {
            let col = colour(i);
            if s.style != SeriesStyle::Points {
                for seg in s.points.split(|&p| !finite(p)).filter(|seg| !seg.is_empty()) {
                    if seg.len() == 1 && s.style == SeriesStyle::Line {
                        c.dot(f.px(seg[0]), 3.5, col, "");
                    }
                    let coords: Vec<String> =
                        seg.iter().map(|&p| f.px(p)).map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
                    let _ = write!(
                        c.body,
                        r#"<polyline fill="none" stroke="{col}" stroke-width="2" stroke-linejoin="round"{} points="{}"/>"#,
                        dash(i),
                        coords.join(" ")
                    );
                }
            }
            if s.style != SeriesStyle::Line {
                let halo = if s.style == SeriesStyle::LineAndPoints { r#" stroke="white""# } else { "" };
                s.points.iter().filter(|&&p| finite(p)).for_each(|&p| c.dot(f.px(p), 3.0, col, halo));
            }
        }
        for (v, label) in self.hlines.iter().filter(|h| h.0.is_finite()) {
            let y = f.y.map(*v);
            let (x0, x1) = (f.x.map(f.x.lo), f.x.map(f.x.hi));
            let _ = write!(
                c.body,
                r##"<line x1="{x0:.1}" y1="{y:.1}" x2="{x1:.1}" y2="{y:.1}" stroke="#555" stroke-width="1.5" stroke-dasharray="6 4"/>"##
            );
            c.text(x1 - 6.0, y - 5.0, label, r##"text-anchor="end" fill="#555" font-size="11""##);
        }
        if pts().next().is_none() {
            c.no_data(&f);
        }
        c.finish()
    }
}

impl BarChart {
    pub fn new(title: impl Into<String>, x_label: impl Into<String>, y_label: impl Into<String>) -> Self {
        BarChart { title: title.into(), x_label: x_label.into(), y_label: y_label.into(), ..Self::default() }
    }
    pub fn with_categories(mut self, categories: Vec<String>) -> Self {
        self.categories = categories;
        self
    }
    pub fn with_series(mut self, name: impl Into<String>, values: Vec<f64>) -> Self {
        self.series.push((name.into(), values));
        self
    }

    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        write_atomic(path, self.to_svg().as_bytes())
    }

    pub fn to_svg(&self) -> String {
        let n = self.series.iter().map(|s| s.1.len()).chain([self.categories.len()]).max().unwrap_or(0);
        let ns = self.series.len().max(1) as f64;
        let labels: Vec<String> =
            (0..n).map(|i| self.categories.get(i).map_or_else(|| (i + 1).to_string(), |s| shorten(s, 22))).collect();
        let vals = || self.series.iter().flat_map(|s| &s.1).copied().filter(|v| v.is_finite());
        // Bars grow from zero, so zero is in the range and only the far side(s) get headroom.
        let (lo, hi) = vals().fold((0.0f64, 0.0f64), |(a, b), v| (a.min(v), b.max(v)));
        let pad = 0.05 * (hi - lo);
        let y = if hi > lo {
            Span { lo: lo - pad * f64::from(lo < 0.0), hi: hi + pad * f64::from(hi > 0.0), min_step: 0.0 }
        } else {
            Span::of(vals(), 0.0)
        };

        let w = WIDTH.max(110.0 + n as f64 * (ns * 7.0 + 6.0));
        let mut c = Canvas::new(w, 0.0, &self.title);
        let items: Vec<Item> =
            (self.series.iter().enumerate()).map(|(i, s)| Item { text: &s.0, key: Some((i, Key::Bar)) }).collect();
        let top = c.legend(&items);
        // Category labels: horizontal when they fit, else turned 45° or, when crowded, 90°.
        let label_w = labels.iter().map(|l| text_w(l)).fold(0.0, f64::max);
        let band_guess = (w - 80.0 - RIGHT) / n.max(1) as f64;
        let angle: f64 = if label_w + 8.0 <= band_guess {
            0.0
        } else if band_guess >= 20.0 {
            45.0
        } else {
            90.0
        };
        let (sin, cos) = angle.to_radians().sin_cos();
        let bottom = 16.0 + label_w * sin + 12.0 * cos + 26.0;
        c.h = top + BAR_PLOT_HEIGHT + bottom;
        // The first label, when turned, reaches left of its bar group: keep it on the canvas.
        let reach = label_w * cos - band_guess / 2.0 + 8.0;
        let f = c.frame(top, bottom, reach, None, y, (&self.x_label, &self.y_label));

        let band = (f.x1 - f.x0) / n.max(1) as f64;
        let bar = band * 0.8 / ns;
        let stride = if angle == 0.0 { 1 } else { (14.0 / (band * sin)).ceil().max(1.0) as usize };
        let zero = f.y.map(0.0f64.clamp(f.y.lo, f.y.hi));
        for (k, label) in labels.iter().enumerate() {
            let cx = f.x0 + band * (k as f64 + 0.5);
            for (s, (name, values)) in self.series.iter().enumerate() {
                let Some(&v) = values.get(k).filter(|v| v.is_finite()) else { continue };
                let x = cx - band * 0.4 + bar * s as f64;
                let (y0, y1) = (zero.min(f.y.map(v)), zero.max(f.y.map(v)));
                let _ = write!(
                    c.body,
                    r#"<rect x="{x:.1}" y="{y0:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}</title></rect>"#,
                    (bar - if bar > 4.0 { 1.0 } else { 0.0 }).max(0.5),
                    (y1 - y0).max(0.5),
                    colour(s),
                    escape(&format!("{label} / {name}: {v}"))
                );
            }
            let _ = write!(
                c.body,
                r#"<line x1="{cx:.1}" y1="{:.1}" x2="{cx:.1}" y2="{:.1}" stroke="{INK}"/>"#,
                f.y1,
                f.y1 + 4.0
            );
            if k % stride == 0 {
                let (x, y) = (cx + 4.0 * sin, f.y1 + 16.0 - 4.0 * sin);
                let (anchor, rot) =
                    if angle == 0.0 { ("middle", String::new()) } else { ("end", format!(" rotate(-{angle})")) };
                c.text(
                    0.0,
                    0.0,
                    label,
                    &format!(r#"text-anchor="{anchor}" transform="translate({x:.1},{y:.1}){rot}""#),
                );
            }
        }
        if f.y.lo < 0.0 && f.y.hi > 0.0 {
            let (x0, x1) = (f.x0, f.x1);
            let _ = write!(c.body, r#"<line x1="{x0:.1}" y1="{zero:.1}" x2="{x1:.1}" y2="{zero:.1}" stroke="{INK}"/>"#);
        }
        if vals().next().is_none() {
            c.no_data(&f);
        }
        c.finish()
    }
}

impl ScatterPlot {
    pub fn new(title: impl Into<String>, x_label: impl Into<String>, y_label: impl Into<String>) -> Self {
        ScatterPlot { title: title.into(), x_label: x_label.into(), y_label: y_label.into(), ..Self::default() }
    }

    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        write_atomic(path, self.to_svg().as_bytes())
    }

    pub fn to_svg(&self) -> String {
        let pts = || self.points.iter().copied().filter(|&p| finite(p));
        let mut c = Canvas::new(WIDTH, HEIGHT, &self.title);
        let items: Vec<Item> = self.annotation.iter().map(|a| Item { text: a, key: None }).collect();
        let top = c.legend(&items);
        let x = Span::of(pts().map(|p| p.0), 0.04);
        let y = Span::of(pts().map(|p| p.1), 0.05);
        let f = c.frame(top, 46.0, 0.0, Some(x), y, (&self.x_label, &self.y_label));
        let style = r#" fill-opacity="0.75" stroke="white" stroke-width="0.6""#;
        pts().for_each(|p| c.dot(f.px(p), 3.5, PALETTE[0], style));
        if pts().next().is_none() {
            c.no_data(&f);
        }
        c.finish()
    }
}

/// Up to `max_ticks` (at least 2) "nice" tick values inside `[lo, hi]`: multiples of a step
/// 1, 2 or 5 × 10^k, as many as allowed. A zero-width range is widened around its value first;
/// non-finite bounds give no ticks.
pub fn nice_ticks(lo: f64, hi: f64, max_ticks: usize) -> Vec<f64> {
    if !lo.is_finite() || !hi.is_finite() {
        return Vec::new();
    }
    let s = Span::of([lo, hi].into_iter(), 0.0);
    ticks(s.lo, s.hi, max_ticks, 0.0).values
}

/// Escapes text for XML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

fn finite(p: (f64, f64)) -> bool {
    p.0.is_finite() && p.1.is_finite()
}

fn colour(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// Estimated width of 12px sans-serif text, on the wide side so labels never collide.
fn text_w(s: &str) -> f64 {
    let w = |c: char| match c {
        'i' | 'j' | 'l' | '.' | ',' | ':' | ';' | '\'' | '|' | '!' | ' ' => 3.6,
        'f' | 't' | 'r' | 'I' | '(' | ')' | '[' | ']' | '-' => 4.8,
        'm' | 'w' | 'M' | 'W' | '%' | '@' => 10.5,
        c if c.is_ascii_uppercase() => 8.2,
        _ => 7.2,
    };
    s.chars().map(w).sum()
}

/// Series past the palette's length repeat its colours, dashed.
fn dash(i: usize) -> &'static str {
    if (i / PALETTE.len()) % 2 == 1 {
        r#" stroke-dasharray="7 4""#
    } else {
        ""
    }
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    s.chars().take(max - 1).chain(['…']).collect()
}

/// A value range to show, never empty, and the smallest tick step allowed (1 for integer data).
#[derive(Clone, Copy)]
struct Span {
    lo: f64,
    hi: f64,
    min_step: f64,
}

impl Span {
    /// The range of finite `values`, widened by `pad` of its width on both sides; zero width is
    /// widened around the value, and no values give 0..1. Magnitudes are capped at 1e300 so
    /// widths stay finite.
    fn of(values: impl Iterator<Item = f64>, pad: f64) -> Span {
        let (mut lo, mut hi, mut integer) = (f64::INFINITY, f64::NEG_INFINITY, true);
        for v in values.filter(|v| v.is_finite()).map(|v| v.clamp(-1e300, 1e300)) {
            (lo, hi, integer) = (lo.min(v), hi.max(v), integer && v.fract() == 0.0);
        }
        if lo > hi {
            return Span { lo: 0.0, hi: 1.0, min_step: 0.0 };
        }
        let min_step = if integer { 1.0 } else { 0.0 };
        let width = hi - lo;
        if width <= 1e-12 * lo.abs().max(hi.abs()) {
            let d = if lo == 0.0 || integer { 1.0 } else { 0.1 * lo.abs() };
            return Span { lo: lo - d, hi: hi + d, min_step };
        }
        Span { lo: lo - pad * width, hi: hi + pad * width, min_step }
    }
}

struct Ticks {
    values: Vec<f64>,
    step: f64,
    exp: i32,
}

impl Ticks {
    /// Labels with as many decimals as the step needs; scientific for very large or small steps.
    fn labels(&self) -> Vec<String> {
        let sci = self.exp < -4 || self.values.iter().any(|t| t.abs() >= 1e6);
        let label = |&v: &f64| match v {
            0.0 => "0".to_string(),
            _ if sci => sci_label(v, self.exp),
            _ => format!("{v:.*}", (-self.exp).max(0) as usize),
        };
        self.values.iter().map(label).collect()
    }
}

/// `v` (a multiple of 10^`exp`) as `1.5e-6`: only the digits the step needs, trailing zeros cut.
fn sci_label(v: f64, exp: i32) -> String {
    let digits = (v.abs().log10().floor() as i32 - exp).clamp(0, 16) as usize;
    let s = format!("{v:.digits$e}");
    let (mantissa, e) = s.split_once('e').unwrap_or((&s, "0"));
    let mantissa = if mantissa.contains('.') { mantissa.trim_end_matches('0').trim_end_matches('.') } else { mantissa };
    format!("{mantissa}e{e}")
}

/// The densest 1-2-5 ticks in `[lo, hi]` (lo < hi) with at most `max` values and step >= `min_step`.
fn ticks(lo: f64, hi: f64, max: usize, min_step: f64) -> Ticks {
    let max = max.max(2) as f64;
    let e0 = ((hi - lo) / max).log10().floor().clamp(-400.0, 400.0) as i32 - 1;
    for exp in e0..e0 + 40 {
        for m in [1.0, 2.0, 5.0] {
            // k·m·10^exp computed so that each tick is the double nearest the decimal it prints as.
            let value = |k: f64| {
                if exp >= 0 {
                    k * m * 10f64.powi(exp)
                } else {
                    k * m / 10f64.powi(-exp)
                }
            };
            let step = value(1.0);
            let (k0, k1) = ((lo / step - 1e-9).ceil(), (hi / step + 1e-9).floor());
            if step >= min_step && step > 0.0 && k0 <= k1 && k1 - k0 < max {
                let values = (0..=(k1 - k0) as usize).map(|i| value(k0 + i as f64)).collect();
                return Ticks { values, step, exp };
            }
        }
    }
    Ticks { values: vec![lo, hi], step: hi - lo, exp: 0 }
}

/// A numeric axis: the range it shows and the labelled ticks.
struct Axis {
    lo: f64,
    hi: f64,
    /// Pixel positions of `lo` and `hi`.
    px: (f64, f64),
    ticks: Vec<(f64, String)>,
}

impl Axis {
    /// Ticks as dense as fits `len` pixels without labels overlapping.
    fn fit(s: Span, px: (f64, f64), horizontal: bool) -> Axis {
        let len = (px.1 - px.0).abs();
        let mut max = ((len / if horizontal { 70.0 } else { 40.0 }) as usize).max(2);
        loop {
            let t = ticks(s.lo, s.hi, max, s.min_step);
            let labels = t.labels();
            let need = if horizontal { labels.iter().map(|l| text_w(l)).fold(0.0, f64::max) + 14.0 } else { 22.0 };
            if len * t.step / (s.hi - s.lo) >= need || max == 2 {
                return Axis { lo: s.lo, hi: s.hi, px, ticks: t.values.into_iter().zip(labels).collect() };
            }
            max -= 1;
        }
    }

    /// Pixel position of `v`; values far outside the range (capped ones) land just off-canvas.
    fn map(&self, v: f64) -> f64 {
        let t = ((v - self.lo) / (self.hi - self.lo)).clamp(-10.0, 11.0);
        self.px.0 + t * (self.px.1 - self.px.0)
    }
}

/// The plot area (pixels) and its axes; bar charts have no numeric x axis.
struct Frame {
    x0: f64,
    x1: f64,
    y1: f64,
    x: Axis,
    y: Axis,
}

impl Frame {
    fn px(&self, p: (f64, f64)) -> (f64, f64) {
        (self.x.map(p.0), self.y.map(p.1))
    }
}

#[derive(Clone, Copy)]
enum Key {
    Series(SeriesStyle),
    Bar,
}

/// A legend entry; one without a key is a plain note.
struct Item<'a> {
    text: &'a str,
    /// The series index (for colour and dash) and how it is drawn.
    key: Option<(usize, Key)>,
}

struct Canvas {
    w: f64,
    h: f64,
    body: String,
}

impl Canvas {
    fn new(w: f64, h: f64, title: &str) -> Canvas {
        let mut c = Canvas { w, h, body: String::new() };
        c.text(w / 2.0, 24.0, title, r#"text-anchor="middle" font-size="15" font-weight="bold""#);
        c
    }

    fn finish(self) -> String {
        let (w, h) = (self.w.ceil(), self.h.ceil());
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" \
             font-family=\"Helvetica, Arial, sans-serif\" font-size=\"12\" fill=\"{INK}\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n{}</svg>\n",
            self.body
        )
    }

    fn text(&mut self, x: f64, y: f64, s: &str, attrs: &str) {
        if !s.is_empty() {
            let _ = writeln!(self.body, r#"<text x="{x:.1}" y="{y:.1}" {attrs}>{}</text>"#, escape(s));
        }
    }

    fn dot(&mut self, (x, y): (f64, f64), r: f64, fill: &str, attrs: &str) {
        let _ = write!(self.body, r#"<circle cx="{x:.1}" cy="{y:.1}" r="{r}" fill="{fill}"{attrs}/>"#);
    }

    /// Draws legend entries in centred rows under the title; returns the top of the plot area.
    fn legend(&mut self, items: &[Item]) -> f64 {
        let items: Vec<&Item> = items.iter().filter(|i| !i.text.is_empty()).collect();
        let width = |i: &Item| text_w(i.text) + if i.key.is_some() { 26.0 } else { 0.0 };
        let (gap, avail) = (20.0, self.w - 40.0);
        let mut rows: Vec<Vec<&Item>> = Vec::new();
        let mut used = f64::INFINITY;
        for it in items {
            if used + gap + width(it) > avail {
                rows.push(Vec::new());
                used = -gap;
            }
            used += gap + width(it);
            rows.last_mut().expect("a row was pushed").push(it);
        }
        for (r, row) in rows.iter().enumerate() {
            let total: f64 = row.iter().map(|i| width(i) + gap).sum::<f64>() - gap;
            let (mut x, y) = ((self.w - total) / 2.0, 52.0 + 18.0 * r as f64);
            for it in row {
                let mut tx = x;
                if let Some((i, key)) = it.key {
                    let col = colour(i);
                    tx += 26.0;
                    match key {
                        Key::Bar => {
                            let _ = write!(
                                self.body,
                                r#"<rect x="{:.1}" y="{:.1}" width="12" height="12" fill="{col}"/>"#,
                                x + 5.0,
                                y - 10.0
                            );
                        }
                        Key::Series(style) => {
                            if style != SeriesStyle::Points {
                                let _ = write!(
                                    self.body,
                                    r#"<line x1="{x:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{col}" stroke-width="2"{}/>"#,
                                    y - 4.0,
                                    x + 20.0,
                                    y - 4.0,
                                    dash(i)
                                );
                            }
                            if style != SeriesStyle::Line {
                                self.dot((x + 10.0, y - 4.0), 3.0, col, r#" stroke="white""#);
                            }
                        }
                    }
                }
                self.text(tx, y, it.text, "");
                x += width(it) + gap;
            }
        }
        52.0 + 18.0 * rows.len() as f64 - if rows.is_empty() { 4.0 } else { 2.0 }
    }

    /// Lays out the plot area between `top` and `bottom` margins (the left one at least
    /// `min_left`), picks ticks, and draws grid, tick labels, frame and axis titles.
    /// `x` None: a 0..1 x axis without ticks (bar charts).
    fn frame(&mut self, top: f64, bottom: f64, min_left: f64, x: Option<Span>, y: Span, titles: (&str, &str)) -> Frame {
        let (x_label, y_label) = titles;
        let y1 = self.h - bottom;
        let ya = Axis::fit(y, (y1, top), false);
        let label_w = ya.ticks.iter().map(|t| text_w(&t.1)).fold(0.0, f64::max);
        let x0 = (if y_label.is_empty() { 12.0 } else { 34.0 } + label_w + 8.0).max(min_left);
        let x1 = self.w - RIGHT;
        let xa = match x {
            Some(s) => Axis::fit(s, (x0, x1), true),
            None => Axis { lo: 0.0, hi: 1.0, px: (x0, x1), ticks: Vec::new() },
        };
        for (v, label) in &ya.ticks {
            let py = ya.map(*v);
            let _ = write!(self.body, r#"<line x1="{x0:.1}" y1="{py:.1}" x2="{x1:.1}" y2="{py:.1}" stroke="{GRID}"/>"#);
            self.text(x0 - 6.0, py + 4.0, label, r#"text-anchor="end""#);
        }
        for (v, label) in &xa.ticks {
            let px = xa.map(*v);
            let _ =
                write!(self.body, r#"<line x1="{px:.1}" y1="{top:.1}" x2="{px:.1}" y2="{y1:.1}" stroke="{GRID}"/>"#);
            let _ = write!(
                self.body,
                r#"<line x1="{px:.1}" y1="{y1:.1}" x2="{px:.1}" y2="{:.1}" stroke="{INK}"/>"#,
                y1 + 4.0
            );
            self.text(px, y1 + 17.0, label, r#"text-anchor="middle""#);
        }
        let _ = writeln!(
            self.body,
            r##"<rect x="{x0:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#999"/>"##,
            x1 - x0,
            y1 - top
        );
        self.text((x0 + x1) / 2.0, self.h - 10.0, x_label, r#"text-anchor="middle""#);
        let cy = (top + y1) / 2.0;
        self.text(0.0, 0.0, y_label, &format!(r#"text-anchor="middle" transform="translate(18,{cy:.1}) rotate(-90)""#));
        Frame { x0, x1, y1, x: xa, y: ya }
    }

    fn no_data(&mut self, f: &Frame) {
        let (x, y) = ((f.x0 + f.x1) / 2.0, (f.y.px.0 + f.y.px.1) / 2.0);
        self.text(x, y, "no data", r##"text-anchor="middle" fill="#999" font-size="14""##);
    }
}
