//! Report module: JSON files and logs, SVG plots, tick choice, correlations.

use lfgcl::report::{
    nice_ticks, pearson, read_json, read_jsonl, spearman, write_json, BarChart, JsonlWriter, LinePlot, ScatterPlot,
    Series, SeriesStyle,
};
use serde::{Deserialize, Serialize};
use std::io::Write;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Rec {
    step: u32,
    reward: f64,
    name: String,
}

fn rec(step: u32) -> Rec {
    Rec { step, reward: step as f64 * 0.5 - 1.0, name: format!("ep \"{step}\"\n") }
}

#[test]
fn json_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/result.json");
    let value = vec![rec(1), rec(2)];
    write_json(&path, &value).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\n  "), "pretty printed: {text}");
    assert_eq!(read_json::<Vec<Rec>>(&path).unwrap(), value);
}

#[test]
fn json_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.json");
    let e = read_json::<Rec>(&missing).unwrap_err().to_string();
    assert!(e.contains("missing.json"), "{e}");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"step\": 1,").unwrap();
    let e = read_json::<Rec>(&bad).unwrap_err().to_string();
    assert!(e.contains("bad.json") && e.contains("line 1"), "{e}");
}

#[test]
fn atomic_write_leaves_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.json");
    write_json(&path, &rec(1)).unwrap();
    write_json(&path, &rec(2)).unwrap();
    LinePlot::new("t", "x", "y").save(dir.path().join("p.svg")).unwrap();
    let mut names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["p.svg", "r.json"]);
    assert_eq!(read_json::<Rec>(&path).unwrap(), rec(2));
}

#[test]
fn jsonl_append_and_truncated_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log/search.jsonl");
    let mut w = JsonlWriter::create(&path).unwrap();
    w.write(&rec(0)).unwrap();
    w.write(&rec(1)).unwrap();
    // Visible to a reader before the writer is dropped: every line is flushed.
    assert_eq!(read_jsonl::<Rec>(&path).unwrap(), [rec(0), rec(1)]);
    drop(w);

    let mut w = JsonlWriter::append(&path).unwrap();
    w.write(&rec(2)).unwrap();
    drop(w);
    assert_eq!(read_jsonl::<Rec>(&path).unwrap(), [rec(0), rec(1), rec(2)]);

    // A run killed mid-line: the partial line is ignored ...
    std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(br#"{"step": 3, "rew"#).unwrap();
    assert_eq!(read_jsonl::<Rec>(&path).unwrap(), [rec(0), rec(1), rec(2)]);
    // ... and appending again cuts it off instead of gluing onto it.
    let mut w = JsonlWriter::append(&path).unwrap();
    w.write(&rec(4)).unwrap();
    drop(w);
    assert_eq!(read_jsonl::<Rec>(&path).unwrap(), [rec(0), rec(1), rec(2), rec(4)]);

    // create() starts over.
    JsonlWriter::create(&path).unwrap().write(&rec(9)).unwrap();
    assert_eq!(read_jsonl::<Rec>(&path).unwrap(), [rec(9)]);
}

#[test]
fn jsonl_complete_last_line_without_newline_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    std::fs::write(&path, "1\n\n2\n3").unwrap();
    assert_eq!(read_jsonl::<i32>(&path).unwrap(), [1, 2, 3]);
    std::fs::write(&path, "").unwrap();
    assert!(read_jsonl::<i32>(&path).unwrap().is_empty());
}

#[test]
fn jsonl_corrupt_middle_line_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.jsonl");
    let good = serde_json::to_string(&rec(0)).unwrap();
    std::fs::write(&path, format!("{good}\n{good}\n{{\"step\": oops}}\n{good}\n")).unwrap();
    let e = read_jsonl::<Rec>(&path).unwrap_err().to_string();
    assert!(e.contains("bad.jsonl") && e.contains("line 3"), "{e}");
    // A complete (newline-terminated) last line that is bad is an error too.
    std::fs::write(&path, format!("{good}\n{{\n")).unwrap();
    let e = read_jsonl::<Rec>(&path).unwrap_err().to_string();
    assert!(e.contains("line 2"), "{e}");
}

/// A small well-formedness check: every tag closed in order, attributes quoted, no NaN/inf.
fn check_svg(svg: &str) {
    assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"), "{svg}");
    for bad in ["NaN", "inf"] {
        assert!(!svg.contains(bad), "{bad} in svg: {svg}");
    }
    let mut stack: Vec<&str> = Vec::new();
    let mut rest = svg;
    while let Some(start) = rest.find('<') {
        let text = &rest[..start];
        assert!(!text.contains('>'), "stray '>' in text {text:?}");
        check_entities(text);
        let end = rest[start..].find('>').expect("unclosed tag") + start;
        let tag = &rest[start + 1..end];
        rest = &rest[end + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(stack.pop(), Some(name.trim()), "mismatched </{name}>");
            continue;
        }
        let self_closing = tag.ends_with('/');
        let tag = tag.trim_end_matches('/');
        let name = tag.split_whitespace().next().expect("tag name");
        let attrs = &tag[name.len()..];
        assert_eq!(attrs.matches('"').count() % 2, 0, "unbalanced quotes in <{tag}>");
        assert!(!attrs.contains('<'), "'<' in attributes of <{tag}>");
        check_entities(attrs);
        if !self_closing {
            stack.push(name);
        }
    }
    assert!(stack.is_empty(), "unclosed: {stack:?}");
}

fn check_entities(s: &str) {
    for (i, _) in s.match_indices('&') {
        let ent = &s[i..s.len().min(i + 7)];
        assert!(
            ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"].iter().any(|e| ent.starts_with(e)),
            "bad entity at {ent:?}"
        );
    }
}

fn curve(n: usize, f: impl Fn(f64) -> f64) -> Vec<(f64, f64)> {
    (0..n).map(|i| (i as f64, f(i as f64))).collect()
}

#[test]
fn line_plots_are_well_formed() {
    let tricky = LinePlot::new("<reward> & \"accuracy\"", "episode 'n'", "R")
        .with_series(Series::line("a<b", curve(50, |x| (x / 7.0).sin())))
        .with_series(Series::new(
            "gaps",
            vec![(0.0, 1.0), (1.0, f64::NAN), (2.0, 0.5), (f64::INFINITY, 2.0), (3.0, 0.2)],
            SeriesStyle::LineAndPoints,
        ))
        .with_series(Series::new("pts", curve(10, |x| x * 0.1), SeriesStyle::Points))
        .with_hline(0.3, "uniform & co")
        .with_hline(f64::NAN, "ignored");
    let svg = tricky.to_svg();
    check_svg(&svg);
    assert!(svg.contains("&lt;reward&gt; &amp; &quot;accuracy&quot;") && svg.contains("uniform &amp; co"));
    assert!(!svg.contains("ignored"));

    let cases = [
        vec![],
        vec![Series::line("empty", vec![])],
        vec![Series::line("one", vec![(3.0, 7.0)])],
        vec![Series::line("const", curve(20, |_| 0.25))],
        vec![Series::line("zero", curve(20, |_| 0.0))],
        vec![Series::line("nan", vec![(f64::NAN, f64::NAN); 3])],
        vec![Series::line("extreme", vec![(-f64::MAX, f64::MAX), (f64::MAX, -f64::MAX)])],
        vec![Series::line("subnormal", vec![(0.0, 1e-310), (1e-310, 2e-310), (3e-310, 5e-320)])],
        vec![Series::line("big", curve(20, |x| 1e9 * x - 3e8)), Series::line("tiny", curve(3, |x| x * 1e-7))],
    ];
    for series in cases {
        let svg =
            LinePlot { title: "t".into(), x_label: "x".into(), y_label: "y".into(), series, hlines: vec![] }.to_svg();
        check_svg(&svg);
    }
}

#[test]
fn bar_and_scatter_are_well_formed() {
    let layers: Vec<String> = (1..=27).map(|i| format!("layer{}.block{}.conv1", i / 9 + 1, i % 9)).collect();
    let best: Vec<f64> = (0..27).map(|i| 0.3 + 0.6 * ((i as f64) * 0.7).sin().abs()).collect();
    let bars = BarChart::new("Keep ratio per layer", "layer", "keep ratio")
        .with_categories(layers)
        .with_series("LFGCL best", best)
        .with_series("uniform", vec![0.5; 27]);
    let svg = bars.to_svg();
    check_svg(&svg);
    assert!(svg.contains("rotate(-"), "27 long labels are rotated");
    for chart in [
        BarChart::new("empty", "", ""),
        BarChart::new("neg", "c", "v")
            .with_categories(vec!["a".into(), "b&c".into()])
            .with_series("s", vec![-1.0, 2.0]),
        BarChart::new("nan", "c", "v").with_categories(vec!["a".into(); 3]).with_series("s", vec![f64::NAN, 0.0]),
        BarChart::new("zeros", "c", "v").with_series("s", vec![0.0; 4]),
    ] {
        check_svg(&chart.to_svg());
    }

    let pts: Vec<(f64, f64)> = (0..40).map(|i| (i as f64 * 0.01, 0.9 - (i as f64 * 0.37).cos() * 0.05)).collect();
    for (points, annotation) in [
        (pts, Some("Spearman ρ = 0.81 <n = 40>".to_string())),
        (vec![], None),
        (vec![(1.0, 1.0)], None),
        (vec![(f64::NAN, 1.0), (1.0, f64::NEG_INFINITY)], Some(String::new())),
    ] {
        let svg = ScatterPlot {
            title: "reward vs accuracy".into(),
            x_label: "reward".into(),
            y_label: "top-1".into(),
            points,
            annotation,
        }
        .to_svg();
        check_svg(&svg);
    }
}

/// Checks the 1-2-5 tick contract and returns the ticks.
fn ticks_ok(lo: f64, hi: f64, max: usize) -> Vec<f64> {
    let t = nice_ticks(lo, hi, max);
    assert!(!t.is_empty() && t.len() <= max.max(2), "{lo}..{hi}: {t:?}");
    if t.len() > 1 {
        let step = t[1] - t[0];
        let mantissa = step / 10f64.powf(step.log10().floor());
        assert!([1.0, 2.0, 5.0, 10.0].iter().any(|m| (mantissa - m).abs() < 1e-6), "step {step} of {t:?}");
        for w in t.windows(2) {
            assert!(((w[1] - w[0]) - step).abs() < 1e-9 * step.max(1.0), "uneven {t:?}");
        }
        for v in &t {
            assert!((v / step - (v / step).round()).abs() < 1e-6, "{v} not a multiple of {step}");
        }
    }
    t
}

#[test]
fn nice_ticks_follow_1_2_5() {
    assert_eq!(ticks_ok(0.0, 1.0, 6), [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
    assert_eq!(ticks_ok(0.0, 1.0, 11), [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]);
    assert_eq!(ticks_ok(0.0, 0.003, 6), [0.0, 0.001, 0.002, 0.003]);
    assert_eq!(ticks_ok(0.0, 0.003, 7), [0.0, 0.0005, 0.001, 0.0015, 0.002, 0.0025, 0.003]);
    assert_eq!(ticks_ok(-5.0, 1234.0, 8), [0.0, 200.0, 400.0, 600.0, 800.0, 1000.0, 1200.0]);
    assert_eq!(ticks_ok(-5.0, 1234.0, 5), [0.0, 500.0, 1000.0]);
    assert_eq!(ticks_ok(-0.37, 0.42, 5), [-0.2, 0.0, 0.2, 0.4]);
    ticks_ok(1e-12, 3e-12, 6);
    ticks_ok(1e-310, 3e-310, 6);
    ticks_ok(-1e300, 1e300, 6);
    ticks_ok(-3e9, 7e9, 6);
    ticks_ok(0.91, 0.93, 6);
    // Constant input is widened around the value.
    let t = ticks_ok(5.0, 5.0, 6);
    assert!(t.contains(&5.0) && t.len() >= 3, "{t:?}");
    let t = ticks_ok(0.0, 0.0, 6);
    assert!(t.contains(&0.0) && t.len() >= 3, "{t:?}");
    // Reversed bounds work; non-finite bounds give nothing.
    assert_eq!(ticks_ok(1.0, 0.0, 6), [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
    assert!(nice_ticks(f64::NAN, 1.0, 6).is_empty());
}

#[test]
fn spearman_and_pearson_known_values() {
    let x = [1.0, 2.0, 3.0, 4.0, 5.0];
    let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-12);
    assert!(close(spearman(&x, &[1.0, 4.0, 9.0, 16.0, 100.0]), 1.0));
    assert!(close(spearman(&x, &[5.0, 4.0, 3.0, 2.0, 1.0]), -1.0));
    assert!(close(pearson(&x, &[2.0, 4.0, 6.0, 8.0, 10.0]), 1.0));
    assert!(close(pearson(&x, &[-1.0, -2.0, -3.0, -4.0, -5.0]), -1.0));
    // Ties get average ranks: y ranks [1.5, 1.5, 3, 4, 5] against 1..5 give
    // sxy = 9.5, sxx = 10, syy = 9.5, so rho = 9.5 / sqrt(95) = sqrt(0.95).
    assert!(close(spearman(&x, &[7.0, 7.0, 8.0, 9.0, 10.0]), 0.95f64.sqrt()));
    assert!(close(spearman(&[7.0, 7.0, 8.0, 9.0, 10.0], &x), 0.95f64.sqrt()));
    assert!(close(spearman(&[1.0, 2.0, 3.0, 4.0], &[1.0, 3.0, 2.0, 4.0]), 0.8));
    // Degenerate inputs.
    assert_eq!(spearman(&[1.0], &[2.0]), None);
    assert_eq!(spearman(&x, &[3.0; 5]), None);
    assert_eq!(pearson(&[1.0, 2.0], &[1.0]), None);
    assert_eq!(pearson(&[1.0, f64::NAN], &[1.0, 2.0]), None);
}

/// Renders examples of each plot for a person to look at: into `$LFGCL_REPORT_EXAMPLES` when set
/// (e.g. /tmp/report-examples), else into a temporary directory that is removed.
#[test]
fn render_examples() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::env::var_os("LFGCL_REPORT_EXAMPLES").map_or_else(|| tmp.path().to_path_buf(), Into::into);
    let episodes = 300;
    let reward: Vec<(f64, f64)> = (0..episodes)
        .map(|i| {
            let x = i as f64;
            (x, 0.62 + 0.2 * (1.0 - (-x / 60.0).exp()) + 0.03 * (x * 0.9).sin())
        })
        .collect();
    let best: Vec<(f64, f64)> = reward
        .iter()
        .scan(f64::MIN, |m, &(x, y)| {
            *m = m.max(y);
            Some((x, *m))
        })
        .collect();
    LinePlot::new("LFGCL search on ResNet-56 (50% FLOPs)", "episode", "label-free reward")
        .with_series(Series::new("episode reward", reward, SeriesStyle::Points))
        .with_series(Series::line("best so far", best))
        .with_series(Series::new(
            "evaluated (top-1)",
            curve(7, |x| 0.7 + 0.02 * x).into_iter().map(|(x, y)| (x * 50.0, y)).collect(),
            SeriesStyle::LineAndPoints,
        ))
        .with_hline(0.71, "uniform pruning reward")
        .save(dir.join("line.svg"))
        .unwrap();
    let layers: Vec<String> = (0..27).map(|i| format!("layer{}.{}.conv1", i / 9 + 1, i % 9)).collect();
    BarChart::new("Per-layer keep ratio, ResNet-56 at 50% FLOPs", "layer", "keep ratio")
        .with_categories(layers)
        .with_series("LFGCL best", (0..27).map(|i| 0.35 + 0.55 * ((i as f64) * 0.7).sin().abs()).collect())
        .with_series("uniform", vec![0.6; 27])
        .save(dir.join("bar.svg"))
        .unwrap();
    let pts: Vec<(f64, f64)> = (0..60)
        .map(|i| {
            let r = 0.6 + 0.3 * (i as f64 / 60.0);
            (r, 0.80 + 0.12 * (r - 0.6) / 0.3 + 0.02 * ((i as f64) * 1.7).sin())
        })
        .collect();
    let (xs, ys): (Vec<f64>, Vec<f64>) = pts.iter().copied().unzip();
    ScatterPlot {
        title: "Label-free reward vs top-1 accuracy".into(),
        x_label: "label-free reward".into(),
        y_label: "top-1 accuracy".into(),
        annotation: Some(format!("Spearman ρ = {:.3}  (n = {})", spearman(&xs, &ys).unwrap(), pts.len())),
        points: pts,
    }
    .save(dir.join("scatter.svg"))
    .unwrap();
    LinePlot::new("Single point", "step", "loss")
        .with_series(Series::line("one point", vec![(3.0, 7.0)]))
        .save(dir.join("single.svg"))
        .unwrap();
    let names =
        ["train loss", "validation loss", "reward (label-free)", "top-1", "FLOPs ratio", "params ratio", "lr", "extra"];
    let mut many = LinePlot::new("Constant, large and many series", "iteration", "value");
    for (i, name) in names.iter().enumerate() {
        many = many.with_series(Series::line(*name, curve(40, |x| 2e6 + 1e6 * i as f64 + 4e4 * x)));
    }
    many.with_series(Series::line("constant", curve(40, |_| 4e6))).save(dir.join("many.svg")).unwrap();
    BarChart::new("Signed values, few categories", "metric", "change (%)")
        .with_categories(["top-1", "top-5", "FLOPs", "params"].map(String::from).to_vec())
        .with_series("ResNet-56", vec![-0.4, -0.1, -52.0, -45.3])
        .with_series("VGG-16", vec![0.2, f64::NAN, -60.1, -80.9])
        .with_series("small CNN", vec![-1.5, -0.3, -30.0, -29.0])
        .save(dir.join("bar-signed.svg"))
        .unwrap();
    BarChart::new("100 one-series categories", "channel group", "score")
        .with_categories((0..100).map(|i| format!("g{i}")).collect())
        .with_series("score", (0..100).map(|i| (i as f64 * 0.003).powi(2)).collect())
        .save(dir.join("bar-many.svg"))
        .unwrap();
    LinePlot::new("Nothing yet", "step", "loss").save(dir.join("empty.svg")).unwrap();
}
