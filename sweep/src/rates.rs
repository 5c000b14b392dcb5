//! A sweep case's logical error rates, read from its aggregated CSV line:
//! what the plots and `qecd report` draw and tabulate.
//!
//! Rates use sinter's conventions (`decoder::stats`): the per-round rate is
//! `0.5 − 0.5·(1 − 2·S)^(1/r)` of the per-shot rate S, and intervals hold the
//! rates within a likelihood factor of [`DEFAULT_LIKELIHOOD_FACTOR`] of the
//! best fit. A case is *saturated* when its per-shot interval reaches 0.5:
//! the shots cannot be told from coin flips, so they bound the per-round rate
//! from below only, and its best fit says nothing.

use anyhow::{Context, Result, bail};
use decoder::stats::{DEFAULT_LIKELIHOOD_FACTOR, ErrorCount, Fit};
use serde_json::Value;

use crate::sinter_csv::StatsRow;

/// One case's counts and the metadata that place it in a table or plot.
#[derive(Clone, Debug, PartialEq)]
pub struct Measured {
    /// Decoder name (the CSV's column, else the metadata's).
    pub decoder: String,
    /// The neural model's file name, if the metadata names one.
    pub model: Option<String>,
    /// The DEM file the decoder used instead of the circuit's, as "NAME
    /// SHA256-PREFIX", if the metadata names one (`qecd sweep --decoder-dem`).
    pub dem: Option<String>,
    /// Memory basis, as the metadata writes it.
    pub basis: Option<String>,
    /// Noise model name.
    pub noise: Option<String>,
    /// The physical error rate and how the metadata wrote it.
    pub p: Option<(f64, String)>,
    /// Code distance.
    pub d: u32,
    /// Rounds per shot (positive).
    pub rounds: f64,
    /// Shots that were not discarded, and errors among them.
    pub count: ErrorCount,
    /// Wall-clock seconds, summed over batches.
    pub seconds: f64,
}

/// A metadata field as text (strings unquoted), if present and not null.
pub fn meta_text(meta: &Value, key: &str) -> Option<String> {
    match meta.get(key)? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        v => Some(v.to_string()),
    }
}

/// A metadata field that must be a positive number.
fn meta_number(row: &StatsRow, key: &str, what: &str) -> Result<f64> {
    let value = row.json_metadata.get(key).with_context(|| {
        format!("case {} has no '{key}' ({what}) in its metadata {}", row.strong_id, row.json_metadata)
    })?;
    let number = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    match number {
        Some(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => bail!("case {}: metadata '{key}' ({what}) is {value}, not a positive number", row.strong_id),
    }
}

impl Measured {
    /// Reads a case total (see `sinter_csv::aggregate`); its metadata needs
    /// `d` and `r`, and its errors must fit in its undiscarded shots.
    pub fn from_row(row: &StatsRow) -> Result<Self> {
        let meta = &row.json_metadata;
        let d = meta_number(row, "d", "code distance")?;
        if d.fract() != 0.0 || d > u32::MAX as f64 {
            bail!("case {}: metadata 'd' (code distance) is {d}, not an integer", row.strong_id);
        }
        let rounds = meta_number(row, "r", "rounds")?;
        if row.errors > row.shots.saturating_sub(row.discards) {
            bail!(
                "case {}: {} errors in {} shots with {} discarded",
                row.strong_id,
                row.errors,
                row.shots,
                row.discards
            );
        }
        let decoder = if row.decoder.trim().is_empty() {
            meta_text(meta, "decoder").unwrap_or_else(|| "?".to_string())
        } else {
            row.decoder.trim().to_string()
        };
        Ok(Self {
            decoder,
            model: meta_text(meta, "model").map(|name| match meta_text(meta, "model_sha256") {
                Some(hash) => format!("{name} {hash}"),
                None => name,
            }),
            dem: meta_text(meta, "dem").map(|name| match meta_text(meta, "dem_sha256") {
                Some(hash) => format!("{name} {hash}"),
                None => name,
            }),
            basis: meta_text(meta, "basis"),
            noise: meta_text(meta, "noise"),
            p: meta_text(meta, "p").map(|text| (text.parse().unwrap_or(f64::NAN), text)),
            d: d as u32,
            rounds,
            count: ErrorCount { shots: row.shots - row.discards, errors: row.errors },
            seconds: row.seconds,
        })
    }

    /// The decoder's name, with the DEM file it used if any:
    /// `correlated [learned.dem 3f2a9c0b1d2e]`. Tables and plots keep cases
    /// apart by it, so a decoder with a learned DEM is never merged with the
    /// same decoder on the circuit's own.
    pub fn decoder_label(&self) -> String {
        match &self.dem {
            Some(dem) => format!("{} [{dem}]", self.decoder),
            None => self.decoder.clone(),
        }
    }

    /// The per-shot rate and its interval.
    pub fn per_shot(&self) -> Fit {
        self.count.fit(DEFAULT_LIKELIHOOD_FACTOR)
    }

    /// The per-round rate and its interval.
    pub fn per_round(&self) -> Fit {
        self.count.fit_per_round(self.rounds, DEFAULT_LIKELIHOOD_FACTOR)
    }

    /// Whether the per-shot interval reaches 0.5 (or there are no shots).
    pub fn saturated(&self) -> bool {
        self.per_shot().high >= 0.5
    }

    /// Adds another case's counts (the same case under another strong id).
    pub fn merge(&mut self, other: &Measured) {
        self.count += other.count;
        self.seconds += other.seconds;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(shots: u64, errors: u64, r: u32) -> StatsRow {
        StatsRow {
            shots,
            errors,
            discards: 0,
            seconds: 2.0,
            decoder: "neural".into(),
            strong_id: "id".into(),
            json_metadata: json!({"basis": "Z", "d": 5, "noise": "si1000", "p": 0.001, "r": r, "model": "m.safetensors"}),
        }
    }

    #[test]
    fn reads_metadata_and_flags_saturation() {
        let m = Measured::from_row(&row(500, 177, 1000)).unwrap();
        assert_eq!((m.d, m.rounds, m.count.shots, m.count.errors), (5, 1000.0, 500, 177));
        assert_eq!(m.p, Some((0.001, "0.001".to_string())));
        assert_eq!((m.basis.as_deref(), m.model.as_deref()), (Some("Z"), Some("m.safetensors")));
        // 177/500 = 0.354: the interval stays below 0.5.
        assert!(!m.saturated(), "{:?}", m.per_shot());
        assert!((m.per_round().best - 6.151e-4).abs() < 1e-7, "{:?}", m.per_round());
        // 7/20 cannot be told from 0.5; 15/20 is above it.
        assert!(Measured::from_row(&row(20, 7, 10_000)).unwrap().saturated());
        assert!(Measured::from_row(&row(20, 15, 10_000)).unwrap().saturated());
        assert!(Measured::from_row(&row(0, 0, 5)).unwrap().saturated());
        let mut bad = row(10, 11, 5);
        assert!(Measured::from_row(&bad).unwrap_err().to_string().contains("11 errors in 10 shots"));
        bad = row(10, 1, 5);
        bad.json_metadata["r"] = json!(0);
        assert!(Measured::from_row(&bad).unwrap_err().to_string().contains("'r' (rounds)"));
    }

    #[test]
    fn a_decoder_dem_labels_the_decoder() {
        let mut r = row(500, 10, 5);
        assert_eq!(Measured::from_row(&r).unwrap().decoder_label(), "neural");
        r.json_metadata["dem"] = json!("learned.dem");
        r.json_metadata["dem_sha256"] = json!("3f2a9c0b1d2e");
        let m = Measured::from_row(&r).unwrap();
        assert_eq!(m.dem.as_deref(), Some("learned.dem 3f2a9c0b1d2e"));
        assert_eq!(m.decoder_label(), "neural [learned.dem 3f2a9c0b1d2e]");
    }
}
