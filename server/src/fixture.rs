//! The kit both fixture suites share (inference parity in `tools::parity`, the training step in
//! `train::parity`): a check and its one-line report, the recorder that collects them, and readers of the
//! fixtures' JSON fields, safetensors and images.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct Check {
    pub case: String,
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tag = if self.ok { "PASS" } else { "FAIL" };
        write!(f, "{tag} {} {}: {}", self.case, self.name, self.detail)
    }
}

/// ‖a − b‖ / ‖b‖ over all elements, in f64.
pub fn rel_l2(a: &Tensor, b: &Tensor) -> anyhow::Result<f64> {
    let a = a.to_dtype(DType::F64)?.flatten_all()?;
    let b = b.to_dtype(DType::F64)?.flatten_all()?;
    anyhow::ensure!(
        a.dims() == b.dims(),
        "shape mismatch {:?} vs {:?}",
        a.dims(),
        b.dims()
    );
    let num = (&a - &b)?.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    let den = b.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    Ok(if den == 0.0 { num } else { num / den })
}

pub struct Recorder<'a> {
    pub case: String,
    pub out: Vec<Check>,
    pub sink: &'a mut dyn FnMut(&Check),
}

/// The checks `body` records for the fixture entry `entry` (named by its `id`): an error inside `body`
/// becomes a failed `run` check, never a panic.
pub fn record_entry(
    entry: &Value,
    sink: &mut dyn FnMut(&Check),
    body: impl FnOnce(&mut Recorder) -> anyhow::Result<()>,
) -> Vec<Check> {
    let id = entry.get("id").and_then(Value::as_str).unwrap_or("?");
    let mut rec = Recorder::new(id, sink);
    if let Err(e) = body(&mut rec) {
        rec.check("run", false, format!("error: {e:#}"));
    }
    rec.out
}

impl<'a> Recorder<'a> {
    /// An empty record of `case`'s checks, each also given to `sink` as it is made.
    pub fn new(case: &str, sink: &'a mut dyn FnMut(&Check)) -> Self {
        Self {
            case: case.to_string(),
            out: Vec::new(),
            sink,
        }
    }

    pub fn check(&mut self, name: &str, ok: bool, detail: impl Into<String>) {
        let c = Check {
            case: self.case.clone(),
            name: name.to_string(),
            ok,
            detail: detail.into(),
        };
        (self.sink)(&c);
        self.out.push(c);
    }

    pub fn close(&mut self, name: &str, value: anyhow::Result<f64>, tol: f64) {
        match value {
            Ok(v) => self.check(name, v <= tol, format!("rel-L2 {v:.2e} (≤ {tol:.1e})")),
            Err(e) => self.check(name, false, format!("error: {e:#}")),
        }
    }

    pub fn equal<T: PartialEq + std::fmt::Debug>(
        &mut self,
        name: &str,
        ours: &[T],
        reference: &[T],
    ) {
        if ours == reference {
            self.check(name, true, format!("{} values identical", ours.len()));
        } else {
            let first = ours.iter().zip(reference).position(|(a, b)| a != b);
            self.check(
                name,
                false,
                format!(
                    "differ (ours {} values, reference {}; first difference at {:?}: {:?} vs {:?})",
                    ours.len(),
                    reference.len(),
                    first,
                    first.and_then(|i| ours.get(i)),
                    first.and_then(|i| reference.get(i))
                ),
            );
        }
    }
}

pub fn str_field<'a>(v: &'a Value, key: &str) -> anyhow::Result<&'a str> {
    v.get(key)
        .and_then(|x| x.as_str())
        .with_context(|| format!("case field {key:?} missing"))
}

pub fn ids_field(v: &Value, key: &str) -> anyhow::Result<Vec<u32>> {
    v.get(key)
        .and_then(|x| x.as_array())
        .with_context(|| format!("case field {key:?} missing"))?
        .iter()
        .map(|x| x.as_u64().map(|n| n as u32).context("non-integer id"))
        .collect()
}

pub fn history_field(v: &Value) -> Vec<(String, String)> {
    v.get("history")
        .and_then(|h| h.as_array())
        .map(|turns| {
            turns
                .iter()
                .filter_map(|t| {
                    let t = t.as_array()?;
                    Some((
                        t.first()?.as_str()?.to_string(),
                        t.get(1)?.as_str()?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn load_st(path: &Path) -> anyhow::Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("cannot read {}", path.display()))
}

pub fn get<'a>(m: &'a HashMap<String, Tensor>, k: &str) -> anyhow::Result<&'a Tensor> {
    m.get(k)
        .with_context(|| format!("fixture tensor {k:?} missing"))
}

pub fn u32s(t: &Tensor) -> anyhow::Result<Vec<u32>> {
    Ok(t.to_dtype(DType::I64)?
        .to_vec1::<i64>()?
        .into_iter()
        .map(|x| x as u32)
        .collect())
}

pub fn open_image(path: &Path) -> anyhow::Result<image::DynamicImage> {
    image::open(path).with_context(|| format!("cannot open image {}", path.display()))
}
