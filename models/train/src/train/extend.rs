//! Extending a trained model with new attributes, without touching what it already
//! computes. In an ASEN v2 head every weight is shared across attributes except one row of
//! `attr_embedding` per attribute, so a new attribute is exactly one new row: [`ExtensionHead`]
//! trains only the new rows (every other tensor of the base model stays bit-identical, so the
//! base attributes' vectors do too), and [`extend_head`] is its loop on cached features of the
//! frozen backbone, selecting the best epoch on the new attributes' valid mAP. The result is a
//! complete model directory whose card names the base model's fingerprint
//! ([`asen_models::BaseModel`]), so a catalogue built with the base can take the new attribute
//! alone.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use asen_models::{
    AttributeSpec, BackboneKind, BaseModel, Head, HeadConfig, HeadKind, ModelCard, ModelDir,
    ModelError, Result, SIGNATURE_FILE,
};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::config::TrainConfig;
use super::run::{run_epoch, trained_provenance, RunDirs, TrainEvent, TrainOptions, TrainOutcome};
use super::sampler::TripletSampler;
use crate::data::{Dataset, Split};
use crate::eval::{embed_split, evaluate_pairs, RetrievalReport};
use crate::features::FeatureCache;

/// The tensor holding one row per attribute.
pub const ATTRIBUTE_ROWS: &str = "attr_embedding.weight";

/// A base model's head with trainable rows for added attributes.
pub struct ExtensionHead {
    cfg: HeadConfig,
    base: BTreeMap<String, Tensor>,
    base_rows: Tensor,
    added: Var,
    device: Device,
}

impl ExtensionHead {
    /// `added` new rows after the rows of `base` (an ASEN v2 model), drawn from `seed` as a
    /// fresh head's rows are (standard normal).
    pub fn new(base: &ModelDir, added: usize, seed: u64) -> Result<Self> {
        let (base_rows, cfg) = base_rows(base, added)?;
        let a = cfg.attention_dim;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let values = super::head::normal(&mut rng, added * a, 0.0, 1.0);
        let added = Var::from_tensor(&Tensor::from_vec(values, (added, a), &Device::Cpu)?)?;
        Ok(Self::from_parts(base, base_rows, added, cfg))
    }

    /// The rows of a saved extension of `base` (a resumed run): its rows after the base's.
    pub fn load(base: &ModelDir, extended: &ModelDir) -> Result<Self> {
        let n = base.card.attributes.len();
        let added = extended.card.attributes.len().saturating_sub(n);
        let (base_rows, cfg) = base_rows(base, added)?;
        let rows = extended
            .tensors()
            .get(ATTRIBUTE_ROWS)
            .ok_or_else(|| mismatch(extended, format!("{ATTRIBUTE_ROWS} is missing")))?
            .to_dtype(DType::F32)?;
        if rows.dims() != [n + added, cfg.attention_dim] || added == 0 {
            return Err(mismatch(
                extended,
                format!(
                    "{ATTRIBUTE_ROWS} has shape {:?}, expected [{}, {}] with at least one added row",
                    rows.dims(),
                    n + added,
                    cfg.attention_dim
                ),
            ));
        }
        let added = Var::from_tensor(&rows.narrow(0, n, added)?)?;
        Ok(Self::from_parts(base, base_rows, added, cfg))
    }

    fn from_parts(base: &ModelDir, base_rows: Tensor, added: Var, cfg: HeadConfig) -> Self {
        Self {
            cfg,
            base: base.tensors().clone(),
            base_rows,
            added,
            device: Device::Cpu,
        }
    }

    /// The only trainable variable: the added rows `[k, A]`.
    pub fn var(&self) -> Var {
        self.added.clone()
    }

    /// Head attribute index of the first added attribute (the base's attribute count).
    pub fn first_added(&self) -> usize {
        self.base_rows.dims()[0]
    }

    /// Every tensor of the extended model: the base's, with the added rows appended to
    /// `attr_embedding` (gradients reach the added rows through it).
    fn tensors(&self) -> Result<HashMap<String, Tensor>> {
        let rows = Tensor::cat(&[&self.base_rows, self.added.as_tensor()], 0)?;
        let mut map: HashMap<String, Tensor> = self
            .base
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        map.insert(ATTRIBUTE_ROWS.to_string(), rows);
        Ok(map)
    }

    /// The extended head over the current rows.
    pub fn head(&self) -> Result<Head> {
        let vb = VarBuilder::from_tensors(self.tensors()?, DType::F32, &self.device);
        Head::new(HeadKind::AsenV2, vb, &self.cfg)
    }

    /// A snapshot of every tensor as variables, for writing a model directory.
    fn var_map(&self) -> Result<VarMap> {
        let map = VarMap::new();
        {
            let mut data = map.data().lock().unwrap_or_else(|p| p.into_inner());
            for (name, t) in self.tensors()? {
                data.insert(name, Var::from_tensor(&t.detach())?);
            }
        }
        Ok(map)
    }
}

/// `attr_embedding` of `base` (checked: an ASEN v2 model) and the head sizes with `added`
/// more attributes.
fn base_rows(base: &ModelDir, added: usize) -> Result<(Tensor, HeadConfig)> {
    if base.card.head != HeadKind::AsenV2 {
        return Err(ModelError::InvalidArgument(format!(
            "{}: a {} head cannot be extended; only an asen_v2 head keeps one row per attribute \
             apart from weights shared by all",
            base.path().display(),
            base.card.head
        )));
    }
    if base.card.head_config.fine_channels > 0 {
        return Err(ModelError::InvalidArgument(format!(
            "{}: the model has a second head on the fine grid (fine_map); extending trains one \
             row per attribute of a single head, so it cannot extend this model",
            base.path().display()
        )));
    }
    if base.card.head_config.position_cells > 0 {
        return Err(ModelError::InvalidArgument(format!(
            "{}: the model's attention has a position bias per attribute; extending does not \
             train one for the new attributes, so it cannot extend this model",
            base.path().display()
        )));
    }
    if base.has_backbone()? {
        return Err(ModelError::InvalidArgument(format!(
            "{}: the model has a fine-tuned backbone; extending trains on cached features of the \
             shipped frozen backbone, which would not be this model's",
            base.path().display()
        )));
    }
    let mut cfg = base.card.head_config.clone();
    let rows = base
        .tensors()
        .get(ATTRIBUTE_ROWS)
        .ok_or_else(|| mismatch(base, format!("{ATTRIBUTE_ROWS} is missing")))?
        .to_dtype(DType::F32)?;
    if rows.dims() != [cfg.n_attributes, cfg.attention_dim] {
        return Err(mismatch(
            base,
            format!(
                "{ATTRIBUTE_ROWS} has shape {:?}, the card says [{}, {}]",
                rows.dims(),
                cfg.n_attributes,
                cfg.attention_dim
            ),
        ));
    }
    cfg.n_attributes += added;
    Ok((rows, cfg))
}

fn mismatch(model: &ModelDir, report: String) -> ModelError {
    ModelError::CheckpointMismatch {
        path: model.checkpoint.path().to_path_buf(),
        variant: format!("{} model", model.card.head),
        report,
    }
}

/// The training configuration fixed by `base`: head, backbone, colour histogram, input size
/// and head sizes; the schedule and sampling are `TrainConfig`'s defaults, to be set by the
/// caller.
pub fn extension_config(base: &ModelCard) -> Result<TrainConfig> {
    let backbone: BackboneKind = base.backbone.parse()?;
    let mut cfg = TrainConfig::new(base.head, backbone);
    cfg.colour_histogram = base.colour_histogram;
    cfg.fine_map = base.fine_map;
    cfg.input_size = base.input_size;
    cfg.embedding_dim = base.embedding_dim;
    cfg.feature_fc = base.head_config.feature_fc;
    cfg.attention_dim = base.head_config.attention_dim;
    cfg.gate_hidden = base.head_config.gate_hidden;
    Ok(cfg)
}

/// The card of `base` (fingerprint `base_fingerprint`) extended with `dataset`'s attributes:
/// same sizes, thresholds and copy signature, the base first in `extends`.
pub fn extended_card(
    base: &ModelCard,
    base_fingerprint: &str,
    dataset: &Dataset,
    provenance: asen_models::Provenance,
) -> Result<ModelCard> {
    let mut card = base.clone();
    card.attributes
        .extend(dataset.attributes().iter().map(|a| AttributeSpec {
            name: a.name.clone(),
            values: a.values.clone(),
        }));
    card.head_config.n_attributes = card.attributes.len();
    card.extends = std::iter::once(BaseModel {
        fingerprint: base_fingerprint.to_string(),
        attributes: base.attribute_names(),
    })
    .chain(base.extends.iter().cloned())
    .collect();
    card.provenance = provenance;
    card.validate()
        .map_err(|reason| ModelError::InvalidArgument(format!("extended model card: {reason}")))?;
    Ok(card)
}

/// Train the rows of `dataset`'s attributes (all new to `base`, whose fingerprint is
/// `base_fingerprint`) on the cached backbone `features` of `dataset`, with `cfg`'s schedule
/// and sampling ([`extension_config`] sizes). Checkpoints are complete model directories in
/// `out_dir/last` and `out_dir/best` (the base's copy signature copied beside).
#[allow(clippy::too_many_arguments)]
pub fn extend_head(
    dataset: &Dataset,
    features: &FeatureCache,
    base: &ModelDir,
    base_fingerprint: &str,
    cfg: &TrainConfig,
    out_dir: &Path,
    opts: &TrainOptions,
    progress: &mut dyn FnMut(&TrainEvent),
) -> Result<TrainOutcome> {
    cfg.validate()?;
    check_inputs(dataset, features, base, cfg)?;
    let sampler = TripletSampler::new(dataset, cfg.seed)?.with_sampling(cfg.sampling);
    let dirs = RunDirs::new(out_dir);
    let (mut state, resumed) = dirs.start(cfg, opts.resume)?;
    let k = dataset.attributes().len();
    let head = if resumed {
        ExtensionHead::load(base, &ModelDir::load(&dirs.last)?)?
    } else {
        ExtensionHead::new(base, k, cfg.seed)?
    };
    let first = head.first_added() as u32;
    let head_attributes: Vec<usize> = (0..k).map(|a| first as usize + a).collect();
    let mut optimizer = cfg.schedule.adam(vec![head.var()])?;
    let eval_batch = opts.eval_batch();
    let provenance = trained_provenance(opts.command.as_deref(), opts.notes.as_deref());
    let card = extended_card(&base.card, base_fingerprint, dataset, provenance)?;
    for epoch in state.epoch..cfg.epochs {
        // BatchNorm in eval mode: its statistics are the base model's.
        let trained = run_epoch(
            epoch,
            &sampler,
            (cfg, dataset, features),
            &|| head.head(),
            first,
            false,
            None,
            &mut optimizer,
            progress,
        )?;
        let report = evaluate_added(&head, features, dataset, &head_attributes, eval_batch)?;
        let record = trained.record(epoch, report.map);
        let improved = report.map > state.best_map;
        dirs.finish_epoch(&mut state, (&record, &report), (&head.var_map()?, &card))?;
        copy_signature(base, &dirs.last)?;
        if improved {
            copy_signature(base, &dirs.best)?;
        }
        progress(&TrainEvent::Epoch(record));
    }
    dirs.outcome(state)
}

/// The valid-split retrieval of the added attributes.
fn evaluate_added(
    head: &ExtensionHead,
    features: &FeatureCache,
    dataset: &Dataset,
    head_attributes: &[usize],
    batch: usize,
) -> Result<RetrievalReport> {
    let pairs = embed_split(
        &head.head()?,
        features,
        dataset,
        Split::Valid,
        batch,
        Some(head_attributes),
    )?;
    evaluate_pairs(dataset, Split::Valid, &pairs)
}

/// The dataset's attributes are all new to `base`, the features are `base`'s backbone's,
/// and the valid split can select an epoch.
fn check_inputs(
    dataset: &Dataset,
    features: &FeatureCache,
    base: &ModelDir,
    cfg: &TrainConfig,
) -> Result<()> {
    if let Some(a) = dataset
        .attributes()
        .iter()
        .find(|a| base.card.attribute_index(&a.name).is_ok())
    {
        return Err(ModelError::InvalidArgument(format!(
            "{} already has attribute {:?}: extending adds attributes it does not have",
            base.path().display(),
            a.name
        )));
    }
    if features.len() != dataset.len() {
        return Err(ModelError::InvalidArgument(format!(
            "feature cache {} has {} entries for a dataset of {} images",
            features.path().display(),
            features.len(),
            dataset.len()
        )));
    }
    let (c, _, _) = features.dims();
    if c != base.card.feature_channels {
        return Err(ModelError::InvalidArgument(format!(
            "feature cache {} has {c} channels, model {} takes {}",
            features.path().display(),
            base.path().display(),
            base.card.feature_channels
        )));
    }
    if cfg.head != HeadKind::AsenV2 || cfg.finetune.is_some() {
        return Err(ModelError::InvalidArgument(
            "extending trains an asen_v2 head's new rows on cached features".into(),
        ));
    }
    if dataset.probes(Split::Valid).queries.is_empty() {
        return Err(ModelError::InvalidArgument(
            "the valid split has no retrieval queries: nothing to select the best epoch on".into(),
        ));
    }
    Ok(())
}

/// Copy `base`'s copy-signature weights, when it has them, into the model directory `dir`
/// (the extension computes the same signature).
fn copy_signature(base: &ModelDir, dir: &Path) -> Result<()> {
    let from = base.path().join(SIGNATURE_FILE);
    if !from.is_file() {
        return Ok(());
    }
    let to = dir.join(SIGNATURE_FILE);
    std::fs::copy(&from, &to).map_err(|e| ModelError::io(&to, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Attribute, ImageRecord, Probe, ProbeLists};
    use crate::train::head::TrainableHead;
    use asen_models::WEIGHTS_FILE;

    const C: usize = 8;

    fn base_config() -> HeadConfig {
        HeadConfig {
            in_channels: C,
            n_attributes: 2,
            attention_dim: 4,
            gate_hidden: 6,
            embedding_dim: 6,
            feature_fc: true,
            fine_channels: 0,
            position_cells: 0,
        }
    }

    /// A random ASEN v2 model with attributes `a0`, `a1`, saved in `dir`.
    fn base_model(dir: &Path) -> ModelDir {
        base_model_with(dir, base_config())
    }

    fn base_model_with(dir: &Path, cfg: HeadConfig) -> ModelDir {
        let head = TrainableHead::new(HeadKind::AsenV2, &cfg, 3, &Device::Cpu).unwrap();
        std::fs::create_dir_all(dir).unwrap();
        head.save(&dir.join(WEIGHTS_FILE)).unwrap();
        let attributes = vec![AttributeSpec::named("a0"), AttributeSpec::named("a1")];
        ModelCard::new(HeadKind::AsenV2, "mobilenet_v2", 224, attributes, cfg)
            .unwrap()
            .save(dir)
            .unwrap();
        ModelDir::load(dir).unwrap()
    }

    /// 60 images of one new attribute `shade` (3 values): 42 train, 18 valid (6 queries).
    fn dataset() -> Dataset {
        let images: Vec<ImageRecord> = (0..60)
            .map(|i| ImageRecord {
                path: format!("{i}.jpg").into(),
                split: if i < 42 { Split::Train } else { Split::Valid },
                labels: vec![Some((i % 3) as u32)],
            })
            .collect();
        let probe = |i: usize| Probe {
            image: i,
            attribute: 0,
            value: (i % 3) as u32,
        };
        let valid = ProbeLists {
            queries: (42..48).map(probe).collect(),
            candidates: (48..60).map(probe).collect(),
        };
        let attributes = vec![Attribute {
            name: "shade".into(),
            values: vec!["light".into(), "mid".into(), "dark".into()],
        }];
        let empty = ProbeLists {
            queries: vec![],
            candidates: vec![],
        };
        Dataset::from_parts("/", attributes, images, valid, empty, Path::new("test")).unwrap()
    }

    /// Features `[C, 2, 2]`: cell 0 carries the label (channel `shade`) and a marker
    /// (channel 7), the other cells distracting values in the same channels, so the label
    /// is found only by attending to the marked cell.
    fn features(dir: &Path) -> FeatureCache {
        let compute = |idx: &[usize]| -> Result<Tensor> {
            let mut rng = ChaCha8Rng::seed_from_u64(idx[0] as u64);
            let mut v = vec![0f32; idx.len() * C * 4];
            for (n, &i) in idx.iter().enumerate() {
                let noise = super::super::head::normal(&mut rng, C * 4, 0.0, 0.3);
                for c in 0..C {
                    for cell in 0..4 {
                        let value = match cell {
                            0 if c == i % 3 => 2.0,
                            0 if c == 7 => 3.0,
                            0 => 0.0,
                            _ if c == (i / 3 + cell) % 3 => 2.0,
                            _ => 0.0,
                        };
                        v[(n * C + c) * 4 + cell] = value + noise[c * 4 + cell];
                    }
                }
            }
            Ok(Tensor::from_vec(v, (idx.len(), C, 2, 2), &Device::Cpu)?)
        };
        FeatureCache::build(dir.join("f.bin"), "test", 60, 16, compute, &|_, _| {}).unwrap()
    }

    fn config() -> TrainConfig {
        let mut cfg = extension_config(&base_model_card()).unwrap();
        cfg.epochs = 3;
        cfg.triplets_per_epoch = 256;
        cfg.batch_size = 32;
        cfg.schedule = super::super::schedule::StepDecay::new(0.05, 0.5, 2).unwrap();
        cfg
    }

    fn base_model_card() -> ModelCard {
        let attributes = vec![AttributeSpec::named("a0"), AttributeSpec::named("a1")];
        ModelCard::new(
            HeadKind::AsenV2,
            "mobilenet_v2",
            224,
            attributes,
            base_config(),
        )
        .unwrap()
    }

    struct Run {
        _dir: tempfile::TempDir,
        base: ModelDir,
        extended: ModelDir,
        features: FeatureCache,
        outcome: TrainOutcome,
    }

    fn run() -> Run {
        let dir = tempfile::tempdir().unwrap();
        let base = base_model(&dir.path().join("base"));
        let features = features(dir.path());
        let outcome = extend_head(
            &dataset(),
            &features,
            &base,
            "00ff",
            &config(),
            &dir.path().join("out"),
            &TrainOptions::default(),
            &mut |_| {},
        )
        .unwrap();
        let extended = ModelDir::load(&outcome.best_dir).unwrap();
        Run {
            _dir: dir,
            base,
            extended,
            features,
            outcome,
        }
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn every_base_tensor_stays_bit_identical() {
        let r = run();
        for (name, t) in r.base.tensors() {
            let got = &r.extended.tensors()[name];
            if name == ATTRIBUTE_ROWS {
                assert_eq!(values(&got.narrow(0, 0, 2).unwrap()), values(t), "{name}");
            } else {
                assert_eq!(values(got), values(t), "{name}");
            }
        }
        assert_eq!(r.extended.tensors().len(), r.base.tensors().len());
    }

    #[test]
    fn the_card_appends_the_attribute_and_names_the_base() {
        let r = run();
        let card = &r.extended.card;
        assert_eq!(card.attribute_names(), ["a0", "a1", "shade"]);
        assert_eq!(card.head_config.n_attributes, 3);
        assert_eq!(card.extends.len(), 1);
        assert_eq!(card.extends[0].fingerprint, "00ff");
        assert_eq!(card.extends[0].attributes, ["a0", "a1"]);
        assert!(card.extends_model("00ff"));
    }

    #[test]
    fn base_attributes_embed_bit_identically() {
        let r = run();
        let x = r.features.get(&[0, 7, 50], &Device::Cpu).unwrap();
        let before = r.base.head(&Device::Cpu).unwrap();
        let after = r.extended.head(&Device::Cpu).unwrap();
        let b = before.forward_attributes(&x, &[0, 1]).unwrap();
        let a = after.forward_attributes(&x, &[0, 1]).unwrap();
        for (b, a) in b.iter().zip(&a) {
            assert_eq!(values(&a.embedding), values(&b.embedding));
        }
    }

    #[test]
    fn the_added_row_learns_its_attribute() {
        let r = run();
        let untrained = ExtensionHead::new(&r.base, 1, 0).unwrap();
        let before = evaluate_added(&untrained, &r.features, &dataset(), &[2], 16).unwrap();
        assert!(
            r.outcome.best_map > before.map + 0.05,
            "valid mAP {} after training, {} before",
            r.outcome.best_map,
            before.map
        );
    }

    #[test]
    fn an_attribute_the_base_has_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let base = base_model(&dir.path().join("base"));
        let mut card = base_model_card();
        card.attributes[1].name = "shade".into();
        card.save(base.path()).unwrap();
        let base = ModelDir::load(base.path()).unwrap();
        let err = refusal(dir.path(), &base);
        assert!(err.contains("already has attribute \"shade\""), "{err}");
    }

    /// The error of extending `base` with `shade`, working in `dir`.
    fn refusal(dir: &Path, base: &ModelDir) -> String {
        extend_head(
            &dataset(),
            &features(dir),
            base,
            "00ff",
            &config(),
            &dir.join("out"),
            &TrainOptions::default(),
            &mut |_| {},
        )
        .expect_err("the extension is refused")
        .to_string()
    }

    #[test]
    fn a_base_with_a_position_bias_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = HeadConfig {
            position_cells: 49,
            ..base_config()
        };
        let base = base_model_with(&dir.path().join("base"), cfg);
        let err = refusal(dir.path(), &base);
        assert!(err.contains("position bias"), "{err}");
    }
}
