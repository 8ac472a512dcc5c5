//! Reference profiles: what the training data looked like, per feature.
//!
//! Written by `vigil profile` (or built from the first rows a version serves), read from
//! `<model>/<version>/reference.json`, and validated once when loaded.

use serde::{Deserialize, Serialize};

use super::plan::{Extract, FeatureDef};
use super::stats::{bin_of, quantile_sorted};
use crate::rng::Rng;

/// Integer-valued features with at most this many distinct values are categorical.
pub const MAX_CATEGORIES: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Numeric,
    Categorical,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureProfile {
    pub name: String,
    /// The model input (or output) the feature comes from; empty: the first 2-D input.
    #[serde(default)]
    pub input: String,
    /// Column of a 2-D input, or which per-row summary (see `monitor::plan`).
    pub index: usize,
    pub kind: Kind,
    /// Inner bin edges (numeric): bin = number of edges ≤ x.
    #[serde(default)]
    pub edges: Vec<f64>,
    /// Categories (categorical), ascending.
    #[serde(default)]
    pub categories: Vec<f64>,
    /// Share of training rows per bin (numeric: edges + 1; categorical: per category).
    pub proportions: Vec<f64>,
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
    /// Raw training values, for KS and Wasserstein.
    pub sample: Vec<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Where the reference came from (a file name, or "first N rows served").
    #[serde(default)]
    pub source: String,
    /// Training rows it summarises.
    pub rows: u64,
    pub features: Vec<FeatureProfile>,
    /// Output features (predicted classes, scores), when known.
    #[serde(default)]
    pub outputs: Vec<FeatureProfile>,
}

/// How to build a profile.
#[derive(Clone, Debug)]
pub struct ProfileOptions {
    pub bins: usize,
    pub sample: usize,
    /// Feature names forced categorical / numeric, whatever their values look like.
    pub categorical: Vec<String>,
    pub numeric: Vec<String>,
}

impl Default for ProfileOptions {
    fn default() -> Self {
        ProfileOptions {
            bins: 10,
            sample: 5000,
            categorical: Vec::new(),
            numeric: Vec::new(),
        }
    }
}

/// One column of raw values to profile.
pub struct Column {
    pub name: String,
    pub input: String,
    pub index: usize,
    pub values: Vec<f64>,
}

/// Up to `k` of `values`, chosen reproducibly (partial Fisher-Yates, seed fixed).
pub fn draw_sample(values: &[f64], k: usize) -> Vec<f64> {
    if values.len() <= k {
        return values.to_vec();
    }
    let mut v = values.to_vec();
    let mut rng = Rng::new(0x5eed);
    for i in 0..k {
        let j = i + rng.below((v.len() - i) as u64) as usize;
        v.swap(i, j);
    }
    v.truncate(k);
    v
}

impl FeatureProfile {
    /// Profiles one column (non-finite values are left out).
    pub fn build(col: Column, opts: &ProfileOptions) -> FeatureProfile {
        let mut finite: Vec<f64> = col.values.into_iter().filter(|x| x.is_finite()).collect();
        let (mean, std) = super::stats::mean_std(&finite);
        finite.sort_by(f64::total_cmp);
        let (min, max) = (
            finite.first().copied().unwrap_or(f64::NAN),
            finite.last().copied().unwrap_or(f64::NAN),
        );
        let mut distinct = finite.clone();
        distinct.dedup();
        let integral = finite.iter().all(|x| x.fract() == 0.0);
        let kind = if opts.categorical.contains(&col.name) {
            Kind::Categorical
        } else if opts.numeric.contains(&col.name) {
            Kind::Numeric
        } else if integral && !distinct.is_empty() && distinct.len() <= MAX_CATEGORIES {
            Kind::Categorical
        } else {
            Kind::Numeric
        };
        let n = finite.len().max(1) as f64;
        let (edges, categories, proportions) = match kind {
            Kind::Numeric => {
                let mut edges: Vec<f64> = (1..opts.bins.max(1))
                    .map(|i| quantile_sorted(&finite, i as f64 / opts.bins as f64))
                    .filter(|e| e.is_finite())
                    .collect();
                edges.dedup();
                let mut counts = vec![0u64; edges.len() + 1];
                for &x in &finite {
                    counts[bin_of(&edges, x)] += 1;
                }
                let props = counts.iter().map(|&c| c as f64 / n).collect();
                (edges, Vec::new(), props)
            }
            Kind::Categorical => {
                let props = distinct
                    .iter()
                    .map(|c| finite.iter().filter(|&&x| x == *c).count() as f64 / n)
                    .collect();
                (Vec::new(), distinct, props)
            }
        };
        // Sample from the unsorted order would need the original; sorting then drawing
        // with a fixed seed is just as reproducible.
        let sample = draw_sample(&finite, opts.sample);
        FeatureProfile {
            name: col.name,
            input: col.input,
            index: col.index,
            kind,
            edges,
            categories,
            proportions,
            mean,
            std,
            min,
            max,
            sample,
        }
    }

    /// The problems that make a feature unusable, if any.
    pub fn validate(&self) -> Result<(), String> {
        let f = &self.name;
        let bins = match self.kind {
            Kind::Numeric => {
                if self.edges.windows(2).any(|w| w[0] > w[1])
                    || self.edges.iter().any(|e| !e.is_finite())
                {
                    return Err(format!("feature '{f}': edges must be finite and ascending"));
                }
                self.edges.len() + 1
            }
            Kind::Categorical => {
                if self.categories.is_empty() {
                    return Err(format!(
                        "feature '{f}': a categorical feature needs categories"
                    ));
                }
                self.categories.len()
            }
        };
        if self.proportions.len() != bins {
            return Err(format!(
                "feature '{f}': {} proportions for {bins} bins",
                self.proportions.len()
            ));
        }
        if self.proportions.iter().any(|p| !p.is_finite() || *p < 0.0) {
            return Err(format!(
                "feature '{f}': proportions must be finite and non-negative"
            ));
        }
        let total: f64 = self.proportions.iter().sum();
        if (total - 1.0).abs() > 1e-6 {
            return Err(format!("feature '{f}': proportions sum to {total}, not 1"));
        }
        if self.sample.is_empty() || self.sample.iter().any(|x| !x.is_finite()) {
            return Err(format!(
                "feature '{f}': the sample must be non-empty and finite"
            ));
        }
        Ok(())
    }
}

impl Profile {
    pub fn build(
        columns: Vec<Column>,
        rows: u64,
        source: String,
        opts: &ProfileOptions,
    ) -> Profile {
        Profile {
            source,
            rows,
            features: columns
                .into_iter()
                .map(|c| FeatureProfile::build(c, opts))
                .collect(),
            outputs: Vec::new(),
        }
    }

    /// Parses and validates a `reference.json`.
    pub fn from_json(bytes: &[u8]) -> Result<Profile, String> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let p: Profile = serde_path_to_error::deserialize(de)
            .map_err(|e| format!("invalid reference profile at '{}': {}", e.path(), e.inner()))?;
        if p.features.is_empty() {
            return Err("the reference profile has no features".into());
        }
        for f in p.features.iter().chain(&p.outputs) {
            f.validate()?;
        }
        Ok(p)
    }
}

/// Turns a training-data table into profile columns, checked against the model's
/// monitored features when the model's inputs are known.
pub fn columns_for(
    data: &super::data::Dataset,
    defs: Option<&[FeatureDef]>,
) -> Result<Vec<Column>, String> {
    let rows = data.rows();
    if rows == 0 {
        return Err("no rows".into());
    }
    let width = data.values.len() / rows;
    let summaries = data.shape.len() > 2;
    let input_name = defs
        .and_then(|d| d.first())
        .map(|d| d.tensor_name.clone())
        .unwrap_or_default();
    if let Some(defs) = defs {
        let tensors: std::collections::BTreeSet<usize> = defs.iter().map(|d| d.tensor).collect();
        if tensors.len() != 1 {
            return Err(format!(
                "the model has {} monitored inputs; a data file profiles exactly one",
                tensors.len()
            ));
        }
        let want_summary = defs
            .iter()
            .all(|d| matches!(d.extract, Extract::Summary(_)));
        if summaries != want_summary || (!summaries && defs.len() != width) {
            return Err(format!(
                "the data has {} per row, the model's input '{input_name}' takes {}",
                if summaries {
                    format!("shape {:?}", &data.shape[1..])
                } else {
                    format!("{width} columns")
                },
                if want_summary {
                    "a tensor per row (profiled by per-row mean, std, min, max)".to_string()
                } else {
                    format!("{} columns", defs.len())
                }
            ));
        }
    }
    if summaries {
        let names = ["mean", "std", "min", "max"];
        let prefix = if input_name.is_empty() {
            "input".to_string()
        } else {
            input_name.clone()
        };
        return Ok(names
            .iter()
            .enumerate()
            .map(|(k, n)| Column {
                name: format!("{prefix}.{n}"),
                input: input_name.clone(),
                index: k,
                values: data
                    .values
                    .chunks_exact(width)
                    .map(|row| {
                        let m = row.iter().sum::<f64>() / width as f64;
                        match k {
                            0 => m,
                            1 => (row.iter().map(|x| (x - m) * (x - m)).sum::<f64>()
                                / width as f64)
                                .sqrt(),
                            2 => row.iter().copied().fold(f64::INFINITY, f64::min),
                            _ => row.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                        }
                    })
                    .collect(),
            })
            .collect());
    }
    Ok((0..width)
        .map(|j| Column {
            name: data
                .names
                .as_ref()
                .and_then(|n| n.get(j).cloned())
                .or_else(|| defs.and_then(|d| d.get(j)).map(|d| d.name.clone()))
                .unwrap_or_else(|| format!("f{j}")),
            input: input_name.clone(),
            index: j,
            values: data.values.iter().skip(j).step_by(width).copied().collect(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, values: Vec<f64>) -> Column {
        Column {
            name: name.into(),
            input: "X".into(),
            index: 0,
            values,
        }
    }

    #[test]
    fn numeric_and_categorical_features() {
        let opts = ProfileOptions::default();
        let num =
            FeatureProfile::build(col("x", (0..1000).map(|i| i as f64 / 7.0).collect()), &opts);
        assert_eq!(num.kind, Kind::Numeric);
        assert_eq!(num.edges.len(), 9);
        assert_eq!(num.proportions.len(), 10);
        assert!(
            num.proportions.iter().all(|p| (p - 0.1).abs() < 0.002),
            "{:?}",
            num.proportions
        );
        assert!(num.validate().is_ok());
        let cat =
            FeatureProfile::build(col("c", (0..100).map(|i| (i % 3) as f64).collect()), &opts);
        assert_eq!(cat.kind, Kind::Categorical);
        assert_eq!(cat.categories, vec![0.0, 1.0, 2.0]);
        assert!(cat.validate().is_ok());
        let forced = ProfileOptions {
            numeric: vec!["c".into()],
            ..ProfileOptions::default()
        };
        assert_eq!(
            FeatureProfile::build(col("c", vec![1.0, 2.0, 1.0]), &forced).kind,
            Kind::Numeric
        );
        // Reproducible sample.
        let values: Vec<f64> = (0..20_000).map(f64::from).collect();
        assert_eq!(draw_sample(&values, 100), draw_sample(&values, 100));
        assert_eq!(draw_sample(&values, 100).len(), 100);
    }

    #[test]
    fn malformed_profiles_are_refused() {
        assert!(Profile::from_json(b"{")
            .unwrap_err()
            .contains("invalid reference profile"));
        assert!(Profile::from_json(br#"{"rows": 1, "features": []}"#)
            .unwrap_err()
            .contains("no features"));
        let bad = br#"{"rows": 1, "features": [{"name": "a", "index": 0, "kind": "numeric",
            "edges": [1, 0], "proportions": [0.5, 0.5, 0], "mean": 0, "std": 1, "min": 0, "max": 1, "sample": [1]}]}"#;
        assert!(Profile::from_json(bad).unwrap_err().contains("ascending"));
        let bad = br#"{"rows": 1, "features": [{"name": "a", "index": 0, "kind": "numeric",
            "edges": [0], "proportions": [0.5, 0.6], "mean": 0, "std": 1, "min": 0, "max": 1, "sample": [1]}]}"#;
        assert!(Profile::from_json(bad).unwrap_err().contains("sum to"));
    }
}
