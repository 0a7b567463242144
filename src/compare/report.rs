//! The report of `ecr compare`: per-recipe results over seeds as a Markdown table, a CSV file and a
//! PNG bar chart, each under both evaluation protocols (the paper's, and new-items).
//!
//! A metric is looked up under its own key for the paper protocol and under `new_items.<key>` for
//! the new-items protocol, as `ecr eval --json` writes them. A value that is missing from a seed's
//! map, or is not finite (a metric undefined on that split), counts as not measured for that seed.

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::prelude::*;
use plotters::style::{FontStyle, Palette99, register_font};

/// One recipe's results: one metrics map per seed (keys like "recall@10", "new_items.recall@10", "auc").
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecipeRuns {
    /// The recipe's name, as the report shows it.
    pub recipe: String,
    /// The seeds, in the order of `metrics`.
    pub seeds: Vec<u64>,
    /// One metrics map per seed, parallel to `seeds`.
    pub metrics: Vec<BTreeMap<String, f64>>,
}

/// The comparison: recipes in the order given.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Comparison {
    /// The recipes' results, in the order the report lists them.
    pub runs: Vec<RecipeRuns>,
}

/// The default metric list: the recommender's headline metrics.
pub const DEFAULT_METRICS: &[&str] = ecr_neural::recommend::metrics::HEADLINE;

/// Errors: a thiserror enum naming the file written or the font that could not be found (what to do: set ECR_FONT to a .ttf file).
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A report file or its directory could not be written.
    #[error("could not write {}: {source}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No TrueType font was found to draw the chart's text with.
    #[error(
        "no TrueType font found to draw the chart (looked at $ECR_FONT, {}); set ECR_FONT to a .ttf file",
        searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    FontNotFound {
        /// The files and directories looked at.
        searched: Vec<PathBuf>,
    },
    /// The font that was found (or named by `ECR_FONT`) could not be used.
    #[error("cannot use the font {} for the chart: {reason}; set ECR_FONT to a .ttf file", path.display())]
    BadFont {
        /// The font file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Drawing or encoding the chart failed.
    #[error("could not draw the chart {}: {message}", path.display())]
    Chart {
        /// The PNG file.
        path: PathBuf,
        /// The plotting library's message.
        message: String,
    },
    /// `write_all` wrote the Markdown and CSV reports but not the chart.
    #[error("wrote {}, but not the chart: {source}", written.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" and "))]
    ChartNotWritten {
        /// The files that were written.
        written: Vec<PathBuf>,
        /// Why the chart was not.
        source: Box<ReportError>,
    },
}

/// The two protocols: the name the reports give each, and the prefix of its metric keys.
const PROTOCOLS: [(&str, &str); 2] = [("paper", ""), ("new_items", "new_items.")];

/// One recipe's figures for one metric key.
struct Stats {
    /// One entry per seed: the value, or `None` where that seed did not measure it.
    values: Vec<Option<f64>>,
    mean: f64,
    /// Sample standard deviation (n - 1); 0 for one value.
    std: f64,
    /// How many seeds measured it.
    n: usize,
}

impl Comparison {
    /// Mean and sample standard deviation (n-1; 0 for one seed) of `metric` for recipe `i`; None if no seed has it.
    pub fn mean_std(&self, i: usize, metric: &str) -> Option<(f64, f64)> {
        self.stats(i, metric).map(|s| (s.mean, s.std))
    }

    fn stats(&self, i: usize, key: &str) -> Option<Stats> {
        let run = self.runs.get(i)?;
        let values: Vec<Option<f64>> =
            run.metrics.iter().map(|m| m.get(key).copied().filter(|v| v.is_finite())).collect();
        let present: Vec<f64> = values.iter().flatten().copied().collect();
        let n = present.len();
        if n == 0 {
            return None;
        }
        let mean = present.iter().sum::<f64>() / n as f64;
        let std =
            if n > 1 { (present.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt() } else { 0.0 };
        Some(Stats { values, mean, std, n })
    }

    /// "3 seeds (0, 1, 2)" when every recipe ran the same seeds; else the range of the counts.
    fn seeds_phrase(&self) -> String {
        let counts: Vec<usize> = self.runs.iter().map(|r| r.metrics.len()).collect();
        let (lo, hi) = (counts.iter().min().copied().unwrap_or(0), counts.iter().max().copied().unwrap_or(0));
        let plural = |n: usize| if n == 1 { "seed" } else { "seeds" };
        let same_seeds = self.runs.windows(2).all(|w| w[0].seeds == w[1].seeds);
        match self.runs.first() {
            Some(first) if same_seeds && lo == hi => {
                let list = first.seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
                format!("{hi} {} ({list})", plural(hi))
            }
            _ if lo == hi => format!("{hi} {} per recipe", plural(hi)),
            _ => format!("{lo} to {hi} seeds per recipe"),
        }
    }

    /// A Markdown table: one row per recipe, one column per metric in `metrics`, cells "0.2212 ± 0.0031"; a header naming the seeds count; two tables (or one table with both column groups) for the two protocols: paper (keys as given) and new-items (the same keys prefixed "new_items.").
    ///
    /// The best mean of each column is bold; a cell measured by fewer seeds than the recipe ran says
    /// how many (`(n=2)`); "–" marks a metric no seed measured.
    pub fn to_markdown(&self, metrics: &[&str]) -> String {
        let mut out = String::new();
        let uneven = self.runs.windows(2).any(|w| w[0].metrics.len() != w[1].metrics.len());
        let _ = writeln!(out, "## Recipe comparison\n");
        let _ = writeln!(
            out,
            "Mean ± sample standard deviation over {}. The best mean of each column is bold; – : not measured.",
            self.seeds_phrase()
        );
        for (protocol, prefix) in PROTOCOLS {
            let (title, note) = match protocol {
                "paper" => ("Paper protocol", "Every gold movie, ranked over the whole item set."),
                _ => (
                    "New-items protocol",
                    "Movies already mentioned in the dialogue are removed from the ranking, \
                     and gold movies that were mentioned are dropped.",
                ),
            };
            let _ = writeln!(out, "\n### {title}\n\n{note}\n");
            let _ =
                writeln!(out, "| recipe | {} |", metrics.iter().map(|m| md_escape(m)).collect::<Vec<_>>().join(" | "));
            let _ = writeln!(out, "| --- |{}", " ---: |".repeat(metrics.len()));
            let columns: Vec<Vec<Option<Stats>>> = metrics
                .iter()
                .map(|m| (0..self.runs.len()).map(|i| self.stats(i, &format!("{prefix}{m}"))).collect())
                .collect();
            let best: Vec<Option<f64>> = columns
                .iter()
                .map(|col| col.iter().flatten().map(|s| s.mean).fold(None, |b, m| Some(b.map_or(m, |b: f64| b.max(m)))))
                .collect();
            for (i, run) in self.runs.iter().enumerate() {
                let mut row = format!("| {}", md_escape(&run.recipe));
                if uneven {
                    let n = run.metrics.len();
                    let _ = write!(row, " ({n} seed{})", if n == 1 { "" } else { "s" });
                }
                for (col, best) in columns.iter().zip(&best) {
                    let cell = match &col[i] {
                        None => "–".to_string(),
                        Some(s) => {
                            let mut cell = format!("{:.4} ± {:.4}", s.mean, s.std);
                            if Some(s.mean) == *best {
                                cell = format!("**{cell}**");
                            }
                            if s.n < run.metrics.len() {
                                let _ = write!(cell, " (n={})", s.n);
                            }
                            cell
                        }
                    };
                    let _ = write!(row, " | {cell}");
                }
                let _ = writeln!(out, "{row} |");
            }
        }
        out
    }

    /// CSV: header `recipe,protocol,metric,mean,std,n,seed_values` (seed_values = the per-seed values joined by ';'), one line per recipe × protocol × metric. Quote fields as RFC 4180 needs.
    ///
    /// `protocol` is `paper` or `new_items`; `metric` is the key as given. Numbers are written in
    /// full (they parse back to the same `f64`). A seed that did not measure the metric leaves its
    /// place in `seed_values` empty, and a metric no seed measured has empty `mean` and `std`.
    pub fn to_csv(&self, metrics: &[&str]) -> String {
        let mut out = String::from("recipe,protocol,metric,mean,std,n,seed_values\n");
        for (i, run) in self.runs.iter().enumerate() {
            for (protocol, prefix) in PROTOCOLS {
                for metric in metrics {
                    let stats = self.stats(i, &format!("{prefix}{metric}"));
                    let (mean, std, n, seeds) = match &stats {
                        None => (String::new(), String::new(), 0, vec![String::new(); run.metrics.len()]),
                        Some(s) => (
                            s.mean.to_string(),
                            s.std.to_string(),
                            s.n,
                            s.values.iter().map(|v| v.map(|v| v.to_string()).unwrap_or_default()).collect(),
                        ),
                    };
                    let fields = [run.recipe.as_str(), protocol, metric, &mean, &std, &n.to_string(), &seeds.join(";")];
                    let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
                    out.push_str(&line.join(","));
                    out.push('\n');
                }
            }
        }
        out
    }

    /// A PNG bar chart: one bar group per metric (x axis: metric names), one bar per recipe in each group (a legend maps colours to recipe names), bar height = mean, error bars = ± std, y axis labelled "score" with ticks, a title; two panels (paper protocol, new-items protocol) stacked vertically in one image of about 1400×1000 px.
    ///
    /// The text needs a TrueType font: `$ECR_FONT`, else a common system font (DejaVu Sans, Liberation
    /// Sans, ...), else the first `.ttf` under the system's font directories.
    pub fn write_png(&self, metrics: &[&str], path: &Path) -> Result<(), ReportError> {
        ensure_font()?;
        self.draw_chart(metrics, path)
            .map_err(|e| ReportError::Chart { path: path.to_path_buf(), message: e.to_string() })
    }

    /// Write comparison.md, comparison.csv and comparison.png under `dir` (created), returning the three paths.
    ///
    /// The Markdown and CSV files are written first: when the chart cannot be drawn (no font), the
    /// error says that they were.
    pub fn write_all(&self, metrics: &[&str], dir: &Path) -> Result<[PathBuf; 3], ReportError> {
        std::fs::create_dir_all(dir).map_err(|source| ReportError::Write { path: dir.to_path_buf(), source })?;
        let [md, csv, png] = ["comparison.md", "comparison.csv", "comparison.png"].map(|name| dir.join(name));
        for (path, text) in [(&md, self.to_markdown(metrics)), (&csv, self.to_csv(metrics))] {
            std::fs::write(path, text).map_err(|source| ReportError::Write { path: path.clone(), source })?;
        }
        self.write_png(metrics, &png).map_err(|e| ReportError::ChartNotWritten {
            written: vec![md.clone(), csv.clone()],
            source: Box::new(e),
        })?;
        Ok([md, csv, png])
    }

    fn draw_chart(&self, metrics: &[&str], path: &Path) -> Result<(), Box<dyn StdError>> {
        let root = BitMapBackend::new(path, (CHART_WIDTH, CHART_HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let title = format!("Recipe comparison: mean ± std over {}", self.seeds_phrase());
        let root = root.margin(8, 0, 0, 0).titled(&title, (FONT_FAMILY, 30))?;
        // The legend gets a column of its own at the right, so that it never covers a bar.
        let label_font: TextStyle = (FONT_FAMILY, LABEL_SIZE).into();
        let widest = self
            .runs
            .iter()
            .map(|r| root.estimate_text_size(&r.recipe, &label_font).map(|(w, _)| w))
            .try_fold(0, |acc, w| w.map(|w| acc.max(w)))?;
        let legend_width = (widest + 70).clamp(160, CHART_WIDTH / 3);
        let (plots, legend) = root.split_horizontally(CHART_WIDTH - legend_width);
        let panels = plots.split_evenly((2, 1));
        for ((protocol, prefix), panel) in PROTOCOLS.into_iter().zip(&panels) {
            let caption = match protocol {
                "paper" => "Paper protocol",
                _ => "New-items protocol (movies mentioned in the dialogue removed)",
            };
            self.draw_panel(panel, metrics, prefix, caption)?;
        }
        self.draw_legend(&legend)?;
        root.present()?;
        Ok(())
    }

    fn draw_panel(
        &self,
        area: &DrawingArea<BitMapBackend<'_>, Shift>,
        metrics: &[&str],
        prefix: &str,
        caption: &str,
    ) -> Result<(), Box<dyn StdError>> {
        // Bars: (metric index, recipe index, mean, std) for every measured cell.
        let bars: Vec<(usize, usize, f64, f64)> = metrics
            .iter()
            .enumerate()
            .flat_map(|(m, metric)| {
                let key = format!("{prefix}{metric}");
                (0..self.runs.len()).filter_map(move |r| self.mean_std(r, &key).map(|(mean, std)| (m, r, mean, std)))
            })
            .collect();
        let top = bars.iter().map(|&(_, _, mean, std)| mean + std).fold(0.0, f64::max);
        // Headroom above the tallest error bar, rounded up to a multiple of 0.05.
        let y_max = if top > 0.0 { ((top * 1.08) / 0.05).ceil() * 0.05 } else { 1.0 };
        let groups = metrics.len().max(1);
        let mut chart = ChartBuilder::on(area)
            .caption(caption, (FONT_FAMILY, 22))
            .margin(12)
            .x_label_area_size(58)
            .y_label_area_size(72)
            .build_cartesian_2d(MetricAxis(groups), 0.0..y_max)?;
        let metric_label =
            |x: &f64| metrics.get(x.round().max(0.0) as usize).map(|m| m.to_string()).unwrap_or_default();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(groups)
            .x_label_formatter(&metric_label)
            .y_labels(8)
            .y_label_formatter(&|y| format!("{y:.2}"))
            .y_desc("score")
            .x_desc("metric")
            .label_style((FONT_FAMILY, LABEL_SIZE))
            .axis_desc_style((FONT_FAMILY, 18))
            .light_line_style(WHITE)
            .draw()?;
        // Within a group of width 0.8, each recipe gets an equal slot, and its bar fills 85% of it.
        let slot = 0.8 / self.runs.len().max(1) as f64;
        let bar_x = |m: usize, r: usize| m as f64 - 0.4 + slot * r as f64;
        chart.draw_series(bars.iter().map(|&(m, r, mean, _)| {
            let x0 = bar_x(m, r) + slot * 0.075;
            Rectangle::new([(x0, 0.0), (x0 + slot * 0.85, mean)], recipe_colour(r).filled())
        }))?;
        // Error bars: a vertical line from mean - std to mean + std with a cap at each end (no marker
        // at the mean, which would hide a short bar's top).
        let cap = slot * 0.25;
        let whiskers = bars.iter().filter(|b| b.3 > 0.0).flat_map(|&(m, r, mean, std)| {
            let centre = bar_x(m, r) + slot / 2.0;
            let (low, high) = ((mean - std).max(0.0), mean + std);
            [
                vec![(centre, low), (centre, high)],
                vec![(centre - cap, low), (centre + cap, low)],
                vec![(centre - cap, high), (centre + cap, high)],
            ]
        });
        chart.draw_series(whiskers.map(|points| PathElement::new(points, BLACK.stroke_width(2))))?;
        Ok(())
    }

    fn draw_legend(&self, area: &DrawingArea<BitMapBackend<'_>, Shift>) -> Result<(), Box<dyn StdError>> {
        let font = (FONT_FAMILY, LABEL_SIZE).into_font();
        area.draw(&Text::new("recipe", (14, 40), (FONT_FAMILY, 19).into_font()))?;
        for (r, run) in self.runs.iter().enumerate() {
            let y = 76 + 30 * r as i32;
            area.draw(&Rectangle::new([(14, y), (34, y + 20)], recipe_colour(r).filled()))?;
            area.draw(&Text::new(run.recipe.as_str(), (44, y + 1), font.clone()))?;
        }
        Ok(())
    }
}

/// The chart's x axis: metric group `g` is centred at `g` and spans `g - 0.5 .. g + 0.5`; ticks (and
/// so labels) sit at the group centres only.
struct MetricAxis(usize);

impl Ranged for MetricAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, (start, end): (i32, i32)) -> i32 {
        let fraction = (value + 0.5) / self.0.max(1) as f64;
        start + (fraction * f64::from(end - start)).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, _hint: Hint) -> Vec<f64> {
        (0..self.0).map(|g| g as f64).collect()
    }

    fn range(&self) -> std::ops::Range<f64> {
        -0.5..self.0 as f64 - 0.5
    }
}

const CHART_WIDTH: u32 = 1400;
const CHART_HEIGHT: u32 = 1000;
const LABEL_SIZE: u32 = 17;
/// The family name the chart's font is registered under.
const FONT_FAMILY: &str = "sans-serif";

/// A recipe's bar colour: the ten distinct "Tableau" colours, then plotters' 99-colour palette.
fn recipe_colour(r: usize) -> RGBColor {
    const TABLEAU: [(u8, u8, u8); 10] = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ];
    match TABLEAU.get(r) {
        Some(&(red, green, blue)) => RGBColor(red, green, blue),
        None => {
            let (red, green, blue) = Palette99::pick(r).to_rgba().rgb();
            RGBColor(red, green, blue)
        }
    }
}

/// Escape what would break a Markdown table cell.
fn md_escape(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// One CSV field, quoted when RFC 4180 requires it (a comma, a quote or a line break inside).
fn csv_field(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_string()
    }
}

/// The font the chart was drawn with, once registered (plotters keeps fonts for the whole process).
static REGISTERED_FONT: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Fonts tried in order when `ECR_FONT` is not set.
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    "/usr/share/fonts/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
];

/// Directories searched (recursively) for any `.ttf` when no candidate exists.
const FONT_DIRS: &[&str] = &["/usr/share/fonts", "/usr/local/share/fonts"];

/// Find a font and register it with plotters, once per process.
fn ensure_font() -> Result<PathBuf, ReportError> {
    let mut registered = REGISTERED_FONT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(path) = registered.as_ref() {
        return Ok(path.clone());
    }
    let path = find_font()?;
    let bad = |reason: String| ReportError::BadFont { path: path.clone(), reason };
    let bytes = std::fs::read(&path).map_err(|e| bad(e.to_string()))?;
    // TrueType, OpenType, "true" (old Apple TrueType) or a collection: checked before leaking.
    if !matches!(bytes.get(..4), Some([0, 1, 0, 0] | b"OTTO" | b"true" | b"ttcf")) {
        return Err(bad("not a TrueType or OpenType font file".into()));
    }
    // plotters keeps a `&'static` reference to the font: leak the bytes, once (the mutex is held).
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    register_font(FONT_FAMILY, FontStyle::Normal, bytes).map_err(|_| bad("the font could not be parsed".into()))?;
    *registered = Some(path.clone());
    Ok(path)
}

/// `$ECR_FONT` if set (it must exist), else the first of [`FONT_CANDIDATES`], else the first `.ttf`
/// (preferring a regular sans-serif one) under [`FONT_DIRS`].
fn find_font() -> Result<PathBuf, ReportError> {
    if let Some(path) = std::env::var_os("ECR_FONT").filter(|p| !p.is_empty()).map(PathBuf::from) {
        if path.is_file() {
            return Ok(path);
        }
        return Err(ReportError::BadFont { path, reason: "ECR_FONT names no file".into() });
    }
    if let Some(path) = FONT_CANDIDATES.iter().map(Path::new).find(|p| p.is_file()) {
        return Ok(path.to_path_buf());
    }
    let mut found = Vec::new();
    for dir in FONT_DIRS {
        collect_ttf(Path::new(dir), 0, &mut found);
    }
    // Prefer a regular sans-serif face; then the path, so that the choice is the same every run.
    let rank = |p: &PathBuf| {
        let name = p.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
        let styled = ["bold", "italic", "oblique", "mono", "light", "condensed"].iter().any(|s| name.contains(s));
        (!name.contains("sans"), styled)
    };
    found.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
    found.into_iter().next().ok_or_else(|| ReportError::FontNotFound {
        searched: FONT_CANDIDATES.iter().chain(FONT_DIRS).map(PathBuf::from).collect(),
    })
}

/// Push every `.ttf` file under `dir` onto `found` (a bounded walk: font trees are shallow).
fn collect_ttf(dir: &Path, depth: usize, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() && depth < 6 {
            collect_ttf(&path, depth + 1, found);
        } else if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("ttf")) && found.len() < 10_000 {
            found.push(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(recipe: &str, seeds: &[u64], rows: &[&[(&str, f64)]]) -> RecipeRuns {
        RecipeRuns {
            recipe: recipe.into(),
            seeds: seeds.to_vec(),
            metrics: rows.iter().map(|row| row.iter().map(|&(k, v)| (k.to_string(), v)).collect()).collect(),
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    /// Two recipes: "a" over three seeds (auc missing in seed 2), "b" over one seed.
    fn small() -> Comparison {
        Comparison {
            runs: vec![
                runs(
                    "a",
                    &[0, 1, 2],
                    &[
                        &[("recall@10", 0.2), ("new_items.recall@10", 0.1), ("auc", 0.5)],
                        &[("recall@10", 0.3), ("new_items.recall@10", 0.15), ("auc", 0.6)],
                        &[("recall@10", 0.4), ("new_items.recall@10", 0.2), ("auc", f64::NAN)],
                    ],
                ),
                runs("b", &[7], &[&[("recall@10", 0.25), ("auc", 0.55)]]),
            ],
        }
    }

    #[test]
    fn mean_and_sample_std_by_hand() {
        let c = small();
        // 0.2, 0.3, 0.4: mean 0.3; squared deviations 0.01 + 0 + 0.01 over n-1 = 2 → 0.01, std 0.1.
        let (mean, std) = c.mean_std(0, "recall@10").unwrap();
        assert!(close(mean, 0.3) && close(std, 0.1), "{mean} {std}");
        // The NaN of seed 2 is not measured: 0.5 and 0.6 → mean 0.55, std sqrt(0.005).
        let (mean, std) = c.mean_std(0, "auc").unwrap();
        assert!(close(mean, 0.55) && close(std, 0.005f64.sqrt()), "{mean} {std}");
        // One seed: its value, std 0.
        assert_eq!(c.mean_std(1, "recall@10"), Some((0.25, 0.0)));
        // Missing everywhere, or no such recipe.
        assert_eq!(c.mean_std(1, "new_items.recall@10"), None);
        assert_eq!(c.mean_std(5, "auc"), None);
    }

    #[test]
    fn markdown_has_one_row_per_recipe_and_both_protocols() {
        let c = small();
        let md = c.to_markdown(&["recall@10", "auc"]);
        let rows = |recipe: &str| md.lines().filter(|l| l.starts_with(&format!("| {recipe}"))).collect::<Vec<_>>();
        let (a, b) = (rows("a"), rows("b"));
        // One row per recipe in each of the two tables.
        assert_eq!((a.len(), b.len()), (2, 2), "{md}");
        assert!(md.contains("Paper protocol") && md.contains("New-items protocol"), "{md}");
        assert_eq!(a[0], "| a (3 seeds) | **0.3000 ± 0.1000** | **0.5500 ± 0.0707** (n=2) |");
        assert_eq!(b[0], "| b (1 seed) | 0.2500 ± 0.0000 | **0.5500 ± 0.0000** |");
        assert_eq!(a[1], "| a (3 seeds) | **0.1500 ± 0.0500** | – |");
        assert_eq!(b[1], "| b (1 seed) | – | – |");
        assert!(md.contains("1 to 3 seeds per recipe"), "{md}");
        // With equal seeds the header names them and rows carry no count.
        let even = Comparison { runs: vec![c.runs[0].clone(), RecipeRuns { recipe: "c".into(), ..c.runs[0].clone() }] };
        let md = even.to_markdown(&["recall@10"]);
        assert!(md.contains("over 3 seeds (0, 1, 2)"), "{md}");
        assert!(md.contains("| c | **0.3000 ± 0.1000** |"), "{md}");
    }

    #[test]
    fn csv_parses_back_to_the_same_means() {
        let c = small();
        let metrics = ["recall@10", "auc"];
        let csv = c.to_csv(&metrics);
        let mut lines = csv.lines();
        assert_eq!(lines.next(), Some("recipe,protocol,metric,mean,std,n,seed_values"));
        let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
        assert_eq!(rows.len(), 2 * 2 * metrics.len());
        for row in &rows {
            assert_eq!(row.len(), 7, "{row:?}");
            let i = c.runs.iter().position(|r| r.recipe == row[0]).unwrap();
            let key = if row[1] == "paper" { row[2].to_string() } else { format!("new_items.{}", row[2]) };
            match c.mean_std(i, &key) {
                Some((mean, std)) => {
                    assert_eq!((row[3].parse::<f64>().unwrap(), row[4].parse::<f64>().unwrap()), (mean, std));
                    let values: Vec<f64> =
                        row[6].split(';').filter(|v| !v.is_empty()).map(|v| v.parse().unwrap()).collect();
                    assert_eq!(values.len(), row[5].parse::<usize>().unwrap());
                    assert!(close(values.iter().sum::<f64>() / values.len() as f64, mean));
                }
                None => assert_eq!((row[3], row[4], row[5]), ("", "", "0"), "{row:?}"),
            }
        }
        // The missing auc of seed 2 keeps its place.
        assert!(csv.contains("a,paper,auc,0.55,"), "{csv}");
        assert!(csv.lines().any(|l| l.starts_with("a,paper,auc,") && l.ends_with(",2,0.5;0.6;")), "{csv}");
        // A name that needs quoting is quoted.
        let odd = Comparison { runs: vec![runs("x,\"y\"", &[1], &[&[("auc", 0.5)]])] };
        assert!(odd.to_csv(&["auc"]).contains("\n\"x,\"\"y\"\"\",paper,auc,0.5,0,1,0.5\n"));
    }

    /// The seven recipes of the ablation table over three seeds, with values like real ones.
    fn fixture() -> Comparison {
        let recipes = [
            "ecr",
            "ecr-local",
            "ecr-local-reweight",
            "ecr-local-global",
            "ecr-lua-feedback",
            "baseline-no-emotion",
            "baseline-kg-only",
        ];
        let base = [0.045, 0.21, 0.42, 0.23, 0.45, 0.54, 0.58, 0.11, 0.08];
        let runs = recipes
            .iter()
            .enumerate()
            .map(|(r, recipe)| {
                let seeds = vec![1, 2, 3];
                let metrics = seeds
                    .iter()
                    .map(|&s| {
                        let mut m = BTreeMap::new();
                        for (k, (&metric, &b)) in DEFAULT_METRICS.iter().zip(&base).enumerate() {
                            // A recipe-dependent level and a seed-dependent wobble of a few percent.
                            let level = b * (1.0 - 0.035 * r as f64);
                            let wobble = 1.0 + 0.04 * (((s * 7 + k as u64 * 3 + r as u64) % 5) as f64 - 2.0) / 2.0;
                            m.insert(metric.to_string(), level * wobble);
                            m.insert(format!("new_items.{metric}"), level * wobble * if k < 5 { 0.55 } else { 0.97 });
                        }
                        m
                    })
                    .collect();
                RecipeRuns { recipe: recipe.to_string(), seeds, metrics }
            })
            .collect();
        Comparison { runs }
    }

    #[test]
    fn write_all_writes_three_reports() {
        let dir = std::env::temp_dir().join("ecr-compare-report");
        let _ = std::fs::remove_dir_all(&dir);
        let c = fixture();
        match c.write_all(DEFAULT_METRICS, &dir) {
            Ok(paths) => {
                for path in &paths {
                    assert!(std::fs::metadata(path).unwrap().len() > 0, "{} is empty", path.display());
                }
                let png = std::fs::read(&paths[2]).unwrap();
                assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{} is not a PNG", paths[2].display());
                println!("chart: {}", paths[2].display());
            }
            Err(ReportError::ChartNotWritten { written, source })
                if matches!(*source, ReportError::FontNotFound { .. }) =>
            {
                println!("no font on this machine, PNG not checked: {source}");
                for path in &written {
                    assert!(std::fs::metadata(path).unwrap().len() > 0, "{} is empty", path.display());
                }
            }
            Err(e) => panic!("{e}"),
        }
        let md = std::fs::read_to_string(dir.join("comparison.md")).unwrap();
        assert_eq!(md.lines().filter(|l| l.starts_with("| ecr |")).count(), 2);
        let csv = std::fs::read_to_string(dir.join("comparison.csv")).unwrap();
        assert_eq!(csv.lines().count(), 1 + 7 * 2 * DEFAULT_METRICS.len());
    }
}
