//! Key checking while a model is built: a `VarBuilder` backend that serves
//! tensors from a map, records every requested name and shape, and collects
//! all problems instead of failing at the first one.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

/// A tensor whose shape differs from what the model asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    /// Normalised tensor name.
    pub name: String,
    /// Shape the model asked for.
    pub expected: Vec<usize>,
    /// Shape found in the checkpoint.
    pub found: Vec<usize>,
}

/// Missing, unexpected and mis-shaped keys after building a model from a
/// checkpoint. Its `Display` is one line, naming every key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyReport {
    /// Requested by the model but absent from the checkpoint, with the expected shape.
    pub missing: Vec<(String, Vec<usize>)>,
    /// Present in the checkpoint but never requested, with their shape.
    pub unexpected: Vec<(String, Vec<usize>)>,
    /// Present with the wrong shape.
    pub mismatched: Vec<ShapeMismatch>,
}

impl KeyReport {
    /// True when every key matched.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }
}

impl fmt::Display for KeyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_clean() {
            return write!(f, "all keys match");
        }
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            let names: Vec<String> = self
                .missing
                .iter()
                .map(|(n, s)| format!("{n} {s:?}"))
                .collect();
            parts.push(format!("{} missing ({})", names.len(), names.join(", ")));
        }
        if !self.unexpected.is_empty() {
            let names: Vec<String> = self
                .unexpected
                .iter()
                .map(|(n, s)| format!("{n} {s:?}"))
                .collect();
            parts.push(format!("{} unexpected ({})", names.len(), names.join(", ")));
        }
        if !self.mismatched.is_empty() {
            let names: Vec<String> = self
                .mismatched
                .iter()
                .map(|m| format!("{}: expected {:?}, found {:?}", m.name, m.expected, m.found))
                .collect();
            parts.push(format!("{} mis-shaped ({})", names.len(), names.join(", ")));
        }
        write!(f, "{}", parts.join("; "))
    }
}

#[derive(Default)]
struct State {
    requested: BTreeSet<String>,
    missing: BTreeMap<String, Vec<usize>>,
    mismatched: BTreeMap<String, ShapeMismatch>,
}

/// Tensors to build a model from, with a record of what the model asked for.
///
/// ```
/// use std::collections::BTreeMap;
/// use asen_models::{CheckedTensors, Head, HeadConfig, HeadKind};
/// use candle_core::{DType, Device};
///
/// let checked = CheckedTensors::new(BTreeMap::new()); // an empty checkpoint
/// let cfg = HeadConfig::asen(1024, 8);
/// let _unusable = Head::new(HeadKind::AsenV1, checked.var_builder(DType::F32, &Device::Cpu), &cfg)?;
/// let report = checked.report(); // every problem at once, not just the first
/// assert_eq!(report.missing.len(), 12);
/// assert!(report.to_string().starts_with("12 missing (conv1.bias [512], conv1.weight [512, 1024, 1, 1]"));
/// # Ok::<(), asen_models::ModelError>(())
/// ```
/// Missing or mis-shaped tensors are replaced by zeros so that building goes
/// on and the report is complete; a model built with a non-clean report must
/// not be used.
#[derive(Clone)]
pub struct CheckedTensors {
    tensors: Arc<BTreeMap<String, Tensor>>,
    state: Arc<Mutex<State>>,
}

impl CheckedTensors {
    /// Wrap a map of normalised names to tensors.
    pub fn new(tensors: BTreeMap<String, Tensor>) -> Self {
        Self {
            tensors: Arc::new(tensors),
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    /// A `VarBuilder` serving these tensors (converted to `dtype`, moved to `device`).
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    /// Everything that went wrong so far; unexpected = present and never requested.
    pub fn report(&self) -> KeyReport {
        let state = self.lock();
        let unexpected = self
            .tensors
            .iter()
            .filter(|(k, _)| !state.requested.contains(*k))
            .map(|(k, t)| (k.clone(), t.dims().to_vec()))
            .collect();
        KeyReport {
            missing: state
                .missing
                .iter()
                .map(|(k, s)| (k.clone(), s.clone()))
                .collect(),
            unexpected,
            mismatched: state.mismatched.values().cloned().collect(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means another builder thread panicked; the
        // record itself is still consistent (plain inserts).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SimpleBackend for CheckedTensors {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut state = self.lock();
        state.requested.insert(name.to_owned());
        match self.tensors.get(name) {
            Some(t) if t.shape() == &s => t.to_dtype(dtype)?.to_device(dev),
            Some(t) => {
                state.mismatched.insert(
                    name.to_owned(),
                    ShapeMismatch {
                        name: name.to_owned(),
                        expected: s.dims().to_vec(),
                        found: t.dims().to_vec(),
                    },
                );
                Tensor::zeros(s, dtype, dev)
            }
            None => {
                state.missing.insert(name.to_owned(), s.dims().to_vec());
                Tensor::zeros(s, dtype, dev)
            }
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let mut state = self.lock();
        state.requested.insert(name.to_owned());
        match self.tensors.get(name) {
            Some(t) => t.to_dtype(dtype)?.to_device(dev),
            None => {
                state.missing.insert(name.to_owned(), Vec::new());
                Err(candle_core::Error::CannotFindTensor {
                    path: name.to_owned(),
                })
            }
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_all_problems_at_once() {
        let dev = Device::Cpu;
        let mut m = BTreeMap::new();
        m.insert(
            "a.weight".to_owned(),
            Tensor::zeros((2, 3), DType::F32, &dev).unwrap(),
        );
        m.insert(
            "b.weight".to_owned(),
            Tensor::zeros((4,), DType::F32, &dev).unwrap(),
        );
        m.insert(
            "extra".to_owned(),
            Tensor::zeros((1,), DType::F32, &dev).unwrap(),
        );
        let checked = CheckedTensors::new(m);
        let vb = checked.var_builder(DType::F32, &dev);
        vb.get((2, 3), "a.weight").unwrap();
        vb.get((5,), "b.weight").unwrap();
        vb.pp("c").get((7,), "bias").unwrap();
        let r = checked.report();
        assert_eq!(r.missing, vec![("c.bias".to_owned(), vec![7])]);
        assert_eq!(r.unexpected, vec![("extra".to_owned(), vec![1])]);
        assert_eq!(r.mismatched.len(), 1);
        assert_eq!(
            r.to_string(),
            "1 missing (c.bias [7]); 1 unexpected (extra [1]); 1 mis-shaped (b.weight: expected [5], found [4])"
        );
        assert!(!r.is_clean());
    }
}
