//! Sweep statistics in sinter's CSV format, so that `sinter plot` and
//! `sinter combine` read what `qecd sweep` writes.
//!
//! Each line holds the counts of one finished batch of one case; a case's
//! totals are the sums over the lines with its `strong_id`. Files may be
//! concatenated (repeated header lines are skipped).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// sinter's header line, byte for byte.
pub const CSV_HEADER: &str = "     shots,    errors,  discards, seconds,decoder,strong_id,json_metadata,custom_counts";

/// One line of statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct StatsRow {
    /// Shots decoded.
    pub shots: u64,
    /// Shots decoded wrongly.
    pub errors: u64,
    /// Shots discarded by postselection.
    pub discards: u64,
    /// Wall-clock seconds spent.
    pub seconds: f64,
    /// Decoder name.
    pub decoder: String,
    /// Hash identifying the case (circuit, decoder, DEM, metadata).
    pub strong_id: String,
    /// The case's metadata.
    pub json_metadata: Value,
}

impl StatsRow {
    /// A one-second SI1000 memory-Z case of `decoder` at distance `d`, `r`
    /// rounds and physical error rate `p`, for tests.
    #[cfg(test)]
    pub(crate) fn for_test(decoder: &str, d: u32, r: u32, p: f64, shots: u64, errors: u64) -> Self {
        let json_metadata =
            serde_json::json!({"basis": "Z", "d": d, "decoder": decoder, "noise": "si1000", "p": p, "r": r});
        StatsRow {
            shots,
            errors,
            discards: 0,
            seconds: 1.0,
            decoder: decoder.to_string(),
            strong_id: format!("{decoder}-d{d}-r{r}"),
            json_metadata,
        }
    }
}

/// Quotes a field the way Python's `csv.writer` does (minimal quoting).
fn escape(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) { format!("\"{}\"", text.replace('"', "\"\"")) } else { text.to_string() }
}

/// sinter's rendering of seconds.
fn format_seconds(s: f64) -> String {
    if s < 1.0 {
        format!("{s:.3}")
    } else if s < 10.0 {
        format!("{s:.2}")
    } else {
        format!("{s:.1}")
    }
}

impl StatsRow {
    /// The CSV line, as `sinter.TaskStats.to_csv_line` prints it.
    pub fn to_csv_line(&self) -> String {
        let metadata = serde_json::to_string(&self.json_metadata).expect("JSON values serialize");
        format!(
            "{:>10},{:>10},{:>10},{:>8},{},{},{},",
            self.shots,
            self.errors,
            self.discards,
            format_seconds(self.seconds),
            escape(&self.decoder),
            escape(&self.strong_id),
            escape(&metadata)
        )
    }
}

/// Splits one CSV line into fields, undoing quoting.
fn split_fields(line: &str) -> Result<Vec<String>> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (false, '"') if field.trim().is_empty() => {
                field.clear();
                quoted = true;
            }
            (false, ',') => fields.push(std::mem::take(&mut field)),
            _ => field.push(c),
        }
    }
    if quoted {
        bail!("unterminated quote");
    }
    fields.push(field);
    Ok(fields)
}

/// Reads every statistics line of a sinter CSV text.
pub fn parse_csv(text: &str) -> Result<Vec<StatsRow>> {
    let mut rows = Vec::new();
    let mut columns: Option<HashMap<String, usize>> = None;
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields = split_fields(line).with_context(|| format!("line {}", n + 1))?;
        if fields.first().map(|f| f.trim()) == Some("shots") {
            columns = Some(fields.iter().enumerate().map(|(i, f)| (f.trim().to_string(), i)).collect());
            continue;
        }
        let cols = columns.as_ref().with_context(|| format!("line {}: data before the header line", n + 1))?;
        let get = |name: &str| -> Result<&str> {
            let i = *cols.get(name).with_context(|| format!("the header has no '{name}' column"))?;
            fields.get(i).map(|f| f.trim()).with_context(|| format!("line {}: missing column '{name}'", n + 1))
        };
        let num = |name: &str| -> Result<u64> {
            get(name)?.parse().with_context(|| format!("line {}: '{name}' is not a count", n + 1))
        };
        rows.push(StatsRow {
            shots: num("shots")?,
            errors: num("errors")?,
            discards: num("discards")?,
            seconds: get("seconds")?.parse().with_context(|| format!("line {}: bad seconds", n + 1))?,
            decoder: get("decoder")?.to_string(),
            strong_id: get("strong_id")?.to_string(),
            json_metadata: serde_json::from_str(get("json_metadata")?)
                .with_context(|| format!("line {}: json_metadata is not JSON", n + 1))?,
        });
    }
    Ok(rows)
}

/// Sums the lines of each case, keeping cases in order of first appearance.
pub fn aggregate(rows: &[StatsRow]) -> Vec<StatsRow> {
    let mut order: Vec<StatsRow> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for row in rows {
        match index.get(row.strong_id.as_str()) {
            Some(&i) => {
                let total = &mut order[i];
                total.shots += row.shots;
                total.errors += row.errors;
                total.discards += row.discards;
                total.seconds += row.seconds;
            }
            None => {
                index.insert(&row.strong_id, order.len());
                order.push(row.clone());
            }
        }
    }
    order
}

/// Reads sinter CSV files and sums each case's lines (see [`aggregate`]);
/// fails naming the file that cannot be read, or when there are no statistics.
pub fn read_cases(paths: &[impl AsRef<Path>]) -> Result<Vec<StatsRow>> {
    let mut rows = Vec::new();
    for path in paths {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        rows.extend(parse_csv(&text).with_context(|| format!("{}", path.display()))?);
    }
    let cases = aggregate(&rows);
    if cases.is_empty() {
        let names: Vec<String> = paths.iter().map(|p| p.as_ref().display().to_string()).collect();
        bail!("no statistics in {}", names.join(", "));
    }
    Ok(cases)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_matches_sinter_docstring() {
        // sinter.TaskStats(strong_id='test', json_metadata={'a': [1, 2, 3]},
        //   decoder='pymatching', shots=22, errors=3, seconds=5).to_csv_line()
        let row = StatsRow {
            shots: 22,
            errors: 3,
            discards: 0,
            seconds: 5.0,
            decoder: "pymatching".into(),
            strong_id: "test".into(),
            json_metadata: serde_json::json!({"a": [1, 2, 3]}),
        };
        assert_eq!(
            row.to_csv_line(),
            r#"        22,         3,         0,    5.00,pymatching,test,"{""a"":[1,2,3]}","#
        );
        let parsed = parse_csv(&format!("{CSV_HEADER}\n{}\n", row.to_csv_line())).unwrap();
        assert_eq!(parsed, vec![row]);
    }

    #[test]
    fn concatenated_files_aggregate_by_strong_id() {
        let text = format!(
            "{CSV_HEADER}\n      1000,        42,         0,   0.125,pymatching,aa,\"{{\"\"d\"\":9}}\",\n\
             {CSV_HEADER}\n      3000,        24,         0,   0.125,pymatching,aa,\"{{\"\"d\"\":9}}\",\n\
                   1000,       250,         0,   0.125,pymatching,bb,\"{{\"\"d\"\":7}}\",\n"
        );
        let totals = aggregate(&parse_csv(&text).unwrap());
        assert_eq!(totals.len(), 2);
        assert_eq!((totals[0].shots, totals[0].errors), (4000, 66));
        assert_eq!(totals[1].json_metadata["d"], 7);
        assert!(parse_csv("1,2,3\n").is_err());
    }
}
