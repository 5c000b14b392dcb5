//! `qecd report`: a sweep's logical error rates as a Markdown table.
//!
//! `--by case` (the default) has a row per (basis, noise, p, d, r) and a group
//! of columns per decoder: shots, errors, LER per shot, LER per round with its
//! interval, and the per-round LER over the baseline decoder's. `--by rounds`
//! is for long experiments: a row per (decoder, d, p) and number of rounds,
//! with the per-round LER over that at the fewest rounds measured.
//!
//! Rates follow sinter's conventions (see `crate::rates`). A ratio's interval
//! divides opposite ends of the two intervals, `[low/high′, high/low′]`: it
//! holds every ratio of rates that each lie in their own interval, so it is
//! wider than a joint interval would be. A saturated case (its per-shot
//! interval reaches 0.5) has no upper bound on its per-round rate; it reads
//! "saturated" instead of a number.
//!
//! Cases are the CSV's per-strong-id totals, merged when they share decoder,
//! decoding DEM file, model and (basis, noise, p, d, r). A decoder with a DEM
//! file (`qecd sweep --decoder-dem`) has a column of its own, named after
//! the file ([`Measured::decoder_label`]). A decoder stays one column across
//! distances even with a model per distance; only when two models of one
//! decoder meet on the same row does each model get its own column.

use std::cmp::Ordering;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};
use decoder::stats::{DEFAULT_LIKELIHOOD_FACTOR, Fit};
use simulator_bridge::fsutil::Staged;

use crate::rates::Measured;
use crate::sinter_csv::{self, StatsRow};

/// Arguments of `qecd report`.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Sweep CSV files (sinter format); repeat or comma-separate for several.
    #[arg(long = "in", required = true, value_delimiter = ',')]
    pub inputs: Vec<PathBuf>,
    /// The decoder the others are compared with (`--by case`).
    #[arg(long, default_value = "correlated")]
    pub baseline: String,
    /// Rows: one per case, or per decoder, distance and p along the rounds.
    #[arg(long, value_enum, default_value = "case")]
    pub by: By,
    /// Also write the Markdown to this file (whole, or not at all).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The table's layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum By {
    /// A row per (basis, noise, p, d, r); columns per decoder, with the ratio to the baseline.
    Case,
    /// A row per (decoder, basis, noise, p, d) and r; the ratio to the fewest rounds.
    Rounds,
}

/// Runs `qecd report`.
pub fn run(args: &ReportArgs) -> Result<()> {
    let mut stage = Staged::default();
    let out = stage.add_optional(args.out.as_deref())?;
    let cases = sinter_csv::read_cases(&args.inputs)?;
    let sources: Vec<String> = args.inputs.iter().map(|p| p.display().to_string()).collect();
    let markdown = render(&cases, args.by, &args.baseline, &sources.join(", "))?;
    print!("{markdown}");
    if let Some(out) = out {
        stage.writer(out).write_all(markdown.as_bytes())?;
        stage.commit()?;
        eprintln!("wrote {}", args.out.as_ref().expect("declared").display());
    }
    Ok(())
}

/// What a row of the case table holds fixed.
#[derive(Clone, Debug)]
struct Key {
    basis: Option<String>,
    noise: Option<String>,
    p: Option<(f64, String)>,
    d: u32,
    rounds: f64,
}

impl Key {
    fn of(m: &Measured) -> Key {
        Key { basis: m.basis.clone(), noise: m.noise.clone(), p: m.p.clone(), d: m.d, rounds: m.rounds }
    }

    /// Equal, with p compared as written.
    fn same(&self, other: &Key) -> bool {
        self.cmp(other) == Ordering::Equal
    }

    /// By basis, noise, p (as a number, then as written), d and rounds.
    fn cmp(&self, other: &Key) -> Ordering {
        self.basis
            .cmp(&other.basis)
            .then_with(|| self.noise.cmp(&other.noise))
            .then_with(|| match (&self.p, &other.p) {
                (Some(x), Some(y)) => x.0.total_cmp(&y.0).then_with(|| x.1.cmp(&y.1)),
                (x, y) => x.is_some().cmp(&y.is_some()),
            })
            .then_with(|| self.d.cmp(&other.d))
            .then_with(|| self.rounds.total_cmp(&other.rounds))
    }
}

/// A merged case and the column it goes in.
struct Entry {
    column: usize,
    key: Key,
    m: Measured,
}

/// The cases as entries, and the column names in order of first appearance.
fn entries(cases: &[StatsRow]) -> Result<(Vec<Entry>, Vec<String>)> {
    let measured: Vec<Measured> = cases
        .iter()
        .map(Measured::from_row)
        .filter(|m| m.as_ref().map_or(true, |m| m.count.shots > 0))
        .collect::<Result<_>>()?;
    let labels: Vec<String> = measured.iter().map(Measured::decoder_label).collect();
    // Decoders with two models on one row get a column per model.
    let split: Vec<&str> = measured
        .iter()
        .enumerate()
        .filter(|(i, a)| {
            measured[..*i]
                .iter()
                .enumerate()
                .any(|(j, b)| labels[j] == labels[*i] && b.model != a.model && Key::of(a).same(&Key::of(b)))
        })
        .map(|(i, _)| labels[i].as_str())
        .collect();
    let mut columns: Vec<String> = Vec::new();
    let mut out: Vec<Entry> = Vec::new();
    for (m, label) in measured.iter().zip(&labels) {
        let name = if split.contains(&label.as_str()) {
            format!("{label} ({})", m.model.as_deref().unwrap_or("no model"))
        } else {
            label.clone()
        };
        let column = match columns.iter().position(|c| *c == name) {
            Some(c) => c,
            None => {
                columns.push(name);
                columns.len() - 1
            }
        };
        let key = Key::of(m);
        match out.iter_mut().find(|e| e.column == column && e.key.same(&key)) {
            Some(e) => e.m.merge(m),
            None => out.push(Entry { column, key, m: m.clone() }),
        }
    }
    Ok((out, columns))
}

/// Renders the report: a title, the sources, the table, and a list of notes
/// on its conventions.
pub fn render(cases: &[StatsRow], by: By, baseline: &str, sources: &str) -> Result<String> {
    let (entries, columns) = entries(cases)?;
    let mut md = format!("## Logical error rates\n\nFrom {sources}.\n\n");
    match by {
        By::Case => case_table(&mut md, &entries, &columns, baseline),
        By::Rounds => rounds_table(&mut md, &entries, &columns),
    }
    md.push('\n');
    md += &format!(
        "- LER/round is sinter's per-round rate, 0.5 − 0.5·(1 − 2·LER/shot)^(1/r); in brackets, the rates within a \
         likelihood factor of {DEFAULT_LIKELIHOOD_FACTOR} of the best fit.\n"
    );
    md += "- Ratios divide per-round rates; in brackets, each end of the first interval over the opposite end of the \
           second, [low/high′, high/low′] (conservative; ∞ when the second saw no errors, — when neither did).\n";
    md += "- saturated: the per-shot interval reaches 0.5, so the shots cannot be told from coin flips and do not \
           bound the per-round rate from above.\n";
    let models = models_note(&entries, &columns);
    if !models.is_empty() {
        md += &format!("- Models: {models}.\n");
    }
    Ok(md)
}

/// "neural: a.safetensors (d=3), b.safetensors (d=5)", per column that names models.
fn models_note(entries: &[Entry], columns: &[String]) -> String {
    let mut parts = Vec::new();
    for (c, name) in columns.iter().enumerate() {
        let mut seen: Vec<(String, u32)> = Vec::new();
        for e in entries.iter().filter(|e| e.column == c) {
            if let Some(model) = &e.m.model
                && !seen.iter().any(|(m, d)| m == model && *d == e.m.d)
            {
                seen.push((model.clone(), e.m.d));
            }
        }
        seen.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        if !seen.is_empty() {
            let list: Vec<String> = seen.iter().map(|(m, d)| format!("{m} (d={d})")).collect();
            parts.push(format!("{name}: {}", list.join(", ")));
        }
    }
    parts.join("; ")
}

/// A rate with 4 significant digits, or "0".
fn rate(x: f64) -> String {
    if x == 0.0 { "0".to_string() } else { format!("{x:.3e}") }
}

/// The per-round rate and its interval, or "saturated".
fn per_round_cell(m: &Measured) -> String {
    if m.saturated() {
        return "saturated".to_string();
    }
    let f = m.per_round();
    format!("{} [{:.2e}, {:.2e}]", rate(f.best), f.low, f.high)
}

/// A ratio with 3 significant digits (in scientific notation below 0.001 or
/// from 10,000); ∞, or — for 0/0.
fn ratio(x: f64) -> String {
    if x.is_nan() {
        "—".to_string()
    } else if x.is_infinite() {
        "∞".to_string()
    } else if x == 0.0 {
        "0".to_string()
    } else if !(1e-3..1e4).contains(&x) {
        format!("{x:.2e}")
    } else {
        let digits = (2 - x.log10().floor() as i32).max(0) as usize;
        format!("{x:.digits$}")
    }
}

/// `a`'s per-round rate over `b`'s, with the conservative interval, or
/// "saturated" when either is.
fn ratio_cell(a: &Measured, b: &Measured) -> String {
    if a.saturated() || b.saturated() {
        return "saturated".to_string();
    }
    let (a, b): (Fit, Fit) = (a.per_round(), b.per_round());
    format!("{} [{}, {}]", ratio(a.best / b.best), ratio(a.low / b.high), ratio(a.high / b.low))
}

/// Basis, noise and p, as the row's first cells.
fn key_cells(k: &Key) -> [String; 3] {
    let text = |v: &Option<String>| v.clone().unwrap_or_else(|| "—".to_string());
    [text(&k.basis), text(&k.noise), k.p.as_ref().map_or_else(|| "—".to_string(), |p| p.1.clone())]
}

/// Appends a Markdown table row.
fn push_row(md: &mut String, cells: &[String]) {
    let cells: Vec<String> = cells.iter().map(|c| c.replace('|', "\\|")).collect();
    writeln!(md, "| {} |", cells.join(" | ")).expect("writing to a String");
}

/// Appends a header row and its alignment row (numbers right-aligned after the first `left` columns).
fn push_header(md: &mut String, cells: &[String], left: usize) {
    push_row(md, cells);
    let rule: Vec<String> = (0..cells.len()).map(|i| if i < left { "---" } else { "---:" }.to_string()).collect();
    writeln!(md, "| {} |", rule.join(" | ")).expect("writing to a String");
}

fn case_table(md: &mut String, entries: &[Entry], columns: &[String], baseline: &str) {
    let base = columns.iter().position(|c| c == baseline);
    let mut header: Vec<String> = ["basis", "noise", "p", "d", "r"].map(String::from).to_vec();
    for (c, name) in columns.iter().enumerate() {
        header.extend(["shots", "errors", "LER/shot", "LER/round"].map(|h| format!("{name} {h}")));
        if base.is_some_and(|b| b != c) {
            header.push(format!("{name} ÷ {baseline}"));
        }
    }
    push_header(md, &header, 3);
    let mut keys: Vec<&Key> = Vec::new();
    for e in entries {
        if !keys.iter().any(|k| k.same(&e.key)) {
            keys.push(&e.key);
        }
    }
    keys.sort_by(|a, b| a.cmp(b));
    for key in keys {
        let of = |c: usize| entries.iter().find(|e| e.column == c && e.key.same(key)).map(|e| &e.m);
        let mut cells: Vec<String> = key_cells(key).to_vec();
        cells.extend([key.d.to_string(), key.rounds.to_string()]);
        for c in 0..columns.len() {
            let with_ratio = base.is_some_and(|b| b != c);
            match of(c) {
                Some(m) => {
                    cells.extend([
                        m.count.shots.to_string(),
                        m.count.errors.to_string(),
                        rate(m.count.per_shot()),
                        per_round_cell(m),
                    ]);
                    if with_ratio {
                        cells.push(match base.and_then(of) {
                            Some(b) => ratio_cell(m, b),
                            None => "—".to_string(),
                        });
                    }
                }
                None => cells.extend(std::iter::repeat_n("—".to_string(), 4 + usize::from(with_ratio))),
            }
        }
        push_row(md, &cells);
    }
    if base.is_none() {
        writeln!(md, "\nNo ratios: the baseline '{baseline}' is not among the decoders ({}).", columns.join(", "))
            .expect("writing to a String");
    }
}

fn rounds_table(md: &mut String, entries: &[Entry], columns: &[String]) {
    let header = ["decoder", "basis", "noise", "p", "d", "r", "shots", "errors", "LER/shot", "LER/round", "÷ fewest r"];
    push_header(md, &header.map(String::from), 4);
    let mut order: Vec<&Entry> = entries.iter().collect();
    // Rows of one (basis, noise, p, d) together, decoder by decoder, each along r.
    order.sort_by(|a, b| {
        let (ka, kb) = (Key { rounds: 0.0, ..a.key.clone() }, Key { rounds: 0.0, ..b.key.clone() });
        ka.cmp(&kb).then(a.column.cmp(&b.column)).then(a.key.rounds.total_cmp(&b.key.rounds))
    });
    for (i, e) in order.iter().enumerate() {
        // The group's fewest rounds come first.
        let first = order[..i]
            .iter()
            .find(|f| f.column == e.column && Key { rounds: e.key.rounds, ..f.key.clone() }.same(&e.key))
            .unwrap_or(e);
        let [basis, noise, p] = key_cells(&e.key);
        let vs = if std::ptr::eq(*first, *e) { "(reference)".to_string() } else { ratio_cell(&e.m, &first.m) };
        push_row(
            md,
            &[
                columns[e.column].clone(),
                basis,
                noise,
                p,
                e.key.d.to_string(),
                e.key.rounds.to_string(),
                e.m.count.shots.to_string(),
                e.m.count.errors.to_string(),
                rate(e.m.count.per_shot()),
                per_round_cell(&e.m),
                vs,
            ],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(decoder: &str, d: u32, r: u32, shots: u64, errors: u64) -> StatsRow {
        let mut row = StatsRow::for_test(decoder, d, r, 0.003, shots, errors);
        if decoder == "neural" {
            row.json_metadata["model"] = json!(format!("d{d}.safetensors"));
        }
        row
    }

    /// The table's data rows, as cells.
    fn table_rows(md: &str) -> Vec<Vec<String>> {
        md.lines()
            .filter(|l| {
                l.starts_with("| ")
                    && !l.starts_with("| ---")
                    && !l.starts_with("| basis")
                    && !l.starts_with("| decoder")
            })
            .map(|l| l.trim_matches('|').split(" | ").map(|c| c.trim().to_string()).collect())
            .collect()
    }

    #[test]
    fn case_table_has_rates_and_ratios_per_decoder() {
        let cases = vec![
            row("neural", 3, 3, 10_000, 250),
            row("correlated", 3, 3, 10_000, 200),
            row("neural", 5, 5, 10_000, 0),
            row("correlated", 5, 5, 10_000, 40),
            row("matching", 5, 5, 1_000, 10),
            // The same case recorded under a second strong id merges.
            StatsRow { strong_id: "again".into(), ..row("correlated", 5, 5, 10_000, 60) },
        ];
        let md = render(&cases, By::Case, "correlated", "test.csv").unwrap();
        let header = md.lines().find(|l| l.starts_with("| basis")).unwrap();
        assert_eq!(
            header,
            "| basis | noise | p | d | r | neural shots | neural errors | neural LER/shot | neural LER/round | \
             neural ÷ correlated | correlated shots | correlated errors | correlated LER/shot | correlated LER/round | \
             matching shots | matching errors | matching LER/shot | matching LER/round | matching ÷ correlated |"
        );
        let rows = table_rows(&md);
        assert_eq!(rows.len(), 2);
        let d3 = &rows[0];
        assert_eq!(d3[..8], ["Z", "si1000", "0.003", "3", "3", "10000", "250", "2.500e-2"]);
        // 0.5 − 0.5·(1 − 0.05)^(1/3) = 8.4762e-3 and 0.5 − 0.5·0.96^(1/3) = 6.7576e-3.
        assert!(d3[8].starts_with("8.476e-3 ["), "{}", d3[8]);
        assert!(d3[13].starts_with("6.758e-3 ["), "{}", d3[13]);
        assert!(d3[9].starts_with("1.25 ["), "{}", d3[9]);
        assert_eq!(d3[14..], ["—", "—", "—", "—", "—"]);
        let d5 = &rows[1];
        // Neural saw no errors: rate 0, ratio 0 with a finite upper end.
        assert_eq!(d5[6..8], ["0", "0"]);
        assert!(d5[8].starts_with("0 [0.00e0, "), "{}", d5[8]);
        assert!(d5[9].starts_with("0 [0, ") && !d5[9].contains('∞'), "{}", d5[9]);
        assert_eq!(d5[10..12], ["20000", "100"]);
        assert_eq!(d5[14..16], ["1000", "10"]);
        // 1000 shots, 10 errors vs 20000, 100: per-round ratio ≈ 2.01.
        assert!(d5[18].starts_with("2.01 ["), "{}", d5[18]);
        assert!(md.contains("Models: neural: d3.safetensors (d=3), d5.safetensors (d=5)."), "{md}");
        assert!(md.contains("[low/high′, high/low′]"));
    }

    #[test]
    fn conservative_ratio_interval() {
        let m = |shots, errors| Measured::from_row(&row("x", 3, 3, shots, errors)).unwrap();
        let (a, b) = (m(10_000, 250), m(10_000, 200));
        let (fa, fb) = (a.per_round(), b.per_round());
        let cell = ratio_cell(&a, &b);
        assert_eq!(
            cell,
            format!("{} [{}, {}]", ratio(fa.best / fb.best), ratio(fa.low / fb.high), ratio(fa.high / fb.low))
        );
        assert!(fa.low / fb.high < 1.0 && fa.high / fb.low > 1.5, "{cell}");
        // The baseline saw no errors: the upper end is unbounded.
        assert!(ratio_cell(&a, &m(10_000, 0)).starts_with("∞ ["), "{}", ratio_cell(&a, &m(10_000, 0)));
        assert!(ratio_cell(&a, &m(10_000, 0)).ends_with(", ∞]"));
        assert_eq!(ratio_cell(&m(100, 0), &m(100, 0)).split(' ').next(), Some("—"));
        assert_eq!(ratio(1.2345), "1.23");
        assert_eq!(ratio(0.012345), "0.0123");
        assert_eq!(ratio(123.45), "123");
        assert_eq!(ratio(2.861e-5), "2.86e-5");
        assert_eq!(ratio(35190.0), "3.52e4");
    }

    #[test]
    fn saturated_cases_say_so() {
        let cases = vec![
            row("neural", 5, 10_000, 20, 15),
            row("correlated", 5, 10_000, 20, 7),
            row("neural", 3, 1000, 500, 177),
            row("correlated", 3, 1000, 500, 180),
        ];
        let md = render(&cases, By::Case, "correlated", "x").unwrap();
        let rows = table_rows(&md);
        // d=3 first: 177/500 over 1000 rounds is not saturated.
        assert!(rows[0][8].starts_with("6.151e-4 ["), "{}", rows[0][8]);
        assert_eq!(rows[1][7], "7.500e-1");
        assert_eq!(
            (rows[1][8].as_str(), rows[1][9].as_str(), rows[1][13].as_str()),
            ("saturated", "saturated", "saturated")
        );
        assert!(!md.contains("1.000e0"), "{md}");
    }

    #[test]
    fn rounds_table_compares_with_the_fewest_rounds() {
        let cases = vec![
            row("correlated", 3, 1000, 2_000, 500),
            row("correlated", 3, 25, 20_000, 300),
            row("neural", 3, 25, 20_000, 240),
            row("neural", 3, 10_000, 200, 95),
            row("correlated", 5, 25, 20_000, 20),
        ];
        let md = render(&cases, By::Rounds, "correlated", "x").unwrap();
        let rows = table_rows(&md);
        let summary: Vec<(String, String, String)> =
            rows.iter().map(|r| (r[0].clone(), r[4].clone(), r[5].clone())).collect();
        let want = [
            ("correlated", "3", "25"),
            ("correlated", "3", "1000"),
            ("neural", "3", "25"),
            ("neural", "3", "10000"),
            ("correlated", "5", "25"),
        ];
        assert_eq!(summary, want.map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())));
        assert_eq!(rows[0][10], "(reference)");
        assert_eq!(rows[4][10], "(reference)");
        // 300/20000 over 25 rounds: 6.088e-4 per round; 500/2000 over 1000: 3.465e-4.
        assert!(rows[0][9].starts_with("6.088e-4 ["), "{}", rows[0][9]);
        assert!(rows[1][9].starts_with("3.465e-4 ["), "{}", rows[1][9]);
        assert!(rows[1][10].starts_with("0.569 ["), "{}", rows[1][10]);
        assert_eq!((rows[3][9].as_str(), rows[3][10].as_str()), ("saturated", "saturated"));
    }

    #[test]
    fn two_models_on_one_row_get_their_own_columns() {
        let mut other = row("neural", 3, 3, 1_000, 30);
        other.json_metadata["model"] = json!("big.safetensors");
        other.strong_id = "other".into();
        let cases = vec![row("neural", 3, 3, 1_000, 25), other, row("correlated", 3, 3, 1_000, 20)];
        let (entries, columns) = entries(&cases).unwrap();
        assert_eq!(columns, ["neural (d3.safetensors)", "neural (big.safetensors)", "correlated"]);
        assert_eq!(entries.len(), 3);
        // Without the baseline, no ratio columns, and a note.
        let md = render(&cases, By::Case, "matching", "x").unwrap();
        assert!(!md.contains('÷') && md.contains("No ratios: the baseline 'matching'"), "{md}");
    }

    /// A decoder decoding with a DEM file is a column of its own, compared
    /// with the baseline on the circuit's own DEM; it never merges with it.
    #[test]
    fn a_decoder_dem_gets_its_own_column() {
        let mut learned = row("correlated", 3, 3, 1_000, 10);
        learned.json_metadata["dem"] = json!("learned.dem");
        learned.json_metadata["dem_sha256"] = json!("3f2a9c0b1d2e");
        learned.strong_id = "learned".into();
        let cases = vec![row("correlated", 3, 3, 1_000, 20), learned];
        let (entries, columns) = entries(&cases).unwrap();
        assert_eq!(columns, ["correlated", "correlated [learned.dem 3f2a9c0b1d2e]"]);
        let counts: Vec<(usize, u64)> = entries.iter().map(|e| (e.column, e.m.count.errors)).collect();
        assert_eq!(counts, [(0, 20), (1, 10)]);
    }

    #[test]
    fn out_file_is_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("s.csv");
        let lines: Vec<String> = [row("neural", 3, 3, 1_000, 25), row("correlated", 3, 3, 1_000, 20)]
            .iter()
            .map(StatsRow::to_csv_line)
            .collect();
        std::fs::write(&csv, format!("{}\n{}\n", sinter_csv::CSV_HEADER, lines.join("\n"))).unwrap();
        let out = dir.path().join("r.md");
        let args = ReportArgs {
            inputs: vec![csv.clone()],
            baseline: "correlated".into(),
            by: By::Case,
            out: Some(out.clone()),
        };
        run(&args).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(table_rows(&text).len(), 1);
        assert!(text.contains(&format!("From {}.", csv.display())));
        // A missing directory fails before anything is read; nothing is left behind.
        let bad = ReportArgs { out: Some(dir.path().join("no/r.md")), ..args };
        assert!(run(&bad).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
