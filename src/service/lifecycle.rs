//! A catalogue's model lifecycle: re-embed it with another model from the crops it keeps
//! (reindex), and drop or rename an attribute.
//!
//! A reindex adds, for every attribute `a`, a staging attribute `a~next` and records the
//! [`Migration`] in the schema ([`begin_reindex`]). [`run_migration`] then fills the staging
//! attributes from each item's stored crop with the target model, pass after pass, while
//! searches keep using `a` (and the old model for image queries). Upserts made meanwhile
//! write both (`items::upsert_prepared`). When a pass finds nothing left, the writers are
//! held off for a last pass and one alteration switches: `a` dropped, `a~next` renamed to
//! `a`, the target recorded as the catalogue's model. Everything a run has filled is in
//! the store, so a killed run resumes where it stopped when started again.
//!
//! The catalogue's write gate ([`Service::write_gate`]) orders this with writes and
//! searches: upserts and model-using reads hold it shared, the start and the switch hold it
//! exclusively, so no answer mixes the vectors of two models.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use asen_index::{CatalogueSchema, ItemId, Migration, SchemaChange, StagedAttribute};
use image::RgbImage;
use serde::Serialize;
use tracing::info;

use super::models::describe;
use super::{thumbnails, Model, Result, Service, ServiceError};

/// Suffix of the staging attribute that collects an attribute's new vectors.
pub const STAGING_SUFFIX: &str = "~next";

/// Items listed per page while scanning a catalogue.
const PAGE: usize = 256;

/// How far a migration got; shared between the job and whoever watches it.
#[derive(Debug)]
pub struct Progress {
    target: String,
    started: Instant,
    /// Items of the catalogue when the current pass started.
    total: AtomicU64,
    /// Items of the current pass that hold every staging vector.
    done: AtomicU64,
    /// Staging vectors written by this run (all passes).
    embedded: AtomicU64,
    passes: AtomicU64,
    state: Mutex<JobState>,
}

/// Where a migration job is.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum JobState {
    /// Filling staging attributes.
    Running,
    /// Switched: the catalogue is now the target model's.
    Done,
    /// Stopped by an error; starting it again resumes.
    Failed {
        /// What went wrong.
        error: String,
    },
}

/// What `GET .../reindex` shows.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MigrationStatus {
    /// The catalogue.
    pub catalogue: String,
    /// Fingerprint of the model it moves to.
    pub target: String,
    /// Running, done, failed; `recorded` when the catalogue's schema records a migration
    /// that no job of this server is running (a killed one): start it again to resume.
    #[schema(value_type = Object)]
    pub state: serde_json::Value,
    /// Items of the current pass holding every new vector.
    pub done: u64,
    /// Items of the catalogue when the pass started.
    pub total: u64,
    /// Passes started (a pass after the first catches up with writes made meanwhile).
    pub passes: u64,
    /// Items re-embedded per second by this run.
    pub items_per_s: f64,
    /// Seconds left at that rate, when running.
    pub eta_s: Option<f64>,
}

impl Progress {
    /// A running job towards `target`.
    pub fn new(target: &str) -> Self {
        Self {
            target: target.to_string(),
            started: Instant::now(),
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
            embedded: AtomicU64::new(0),
            passes: AtomicU64::new(0),
            state: Mutex::new(JobState::Running),
        }
    }

    /// The job's state.
    pub fn state(&self) -> JobState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Record how the job ended.
    pub fn finish(&self, result: &Result<CatalogueSchema>) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = match result {
            Ok(_) => JobState::Done,
            Err(e) => JobState::Failed {
                error: e.to_string(),
            },
        };
    }

    /// (done, total) of the current pass.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.done.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        )
    }

    /// Items embedded per second since the start.
    pub fn rate(&self) -> f64 {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        self.embedded.load(Ordering::Relaxed) as f64 / secs
    }

    /// The status a watcher sees.
    pub fn status(&self, catalogue: &str) -> MigrationStatus {
        let (done, total) = self.counts();
        let rate = self.rate();
        let state = self.state();
        let eta_s = (state == JobState::Running && rate > 0.0)
            .then(|| total.saturating_sub(done) as f64 / rate);
        MigrationStatus {
            catalogue: catalogue.to_string(),
            target: self.target.clone(),
            state: serde_json::to_value(&state).unwrap_or_default(),
            done,
            total,
            passes: self.passes.load(Ordering::Relaxed),
            items_per_s: rate,
            eta_s,
        }
    }
}

/// The staging attribute of `attribute`.
pub fn staging_name(attribute: &str) -> String {
    format!("{attribute}{STAGING_SUFFIX}")
}

fn target_model<'s>(svc: &'s Service, fingerprint: &str, what: &str) -> Result<&'s Arc<Model>> {
    let models = svc.models(what)?;
    models
        .get(fingerprint)
        .ok_or_else(|| ServiceError::ModelNotLoaded {
            fingerprint: fingerprint.to_string(),
            loaded: models.fingerprints().collect::<Vec<_>>().join(", "),
        })
}

/// Start moving `catalogue` to the model `fingerprint` (held by this service): check that the
/// model can re-embed it from its stored crops, add the staging attributes and record the
/// migration. A migration to the same model already recorded is returned as it is (resume);
/// one to another model is a conflict.
#[tracing::instrument(skip_all, fields(catalogue = %catalogue, target = %fingerprint))]
pub fn begin_reindex(svc: &Service, catalogue: &str, fingerprint: &str) -> Result<Migration> {
    let store = svc.store("a reindex")?;
    let gate = svc.write_gate(catalogue);
    let _writers_held = gate.write().unwrap_or_else(|p| p.into_inner());
    let schema = store.schema(catalogue)?;
    if let Some(m) = schema.migration {
        if m.target.fingerprint == fingerprint {
            return Ok(m);
        }
        return Err(ServiceError::MigrationInProgress {
            catalogue: catalogue.to_string(),
            target: describe(&m.target),
        });
    }
    let target = target_model(svc, fingerprint, "a reindex")?;
    check_target(svc, catalogue, &schema, target)?;
    let staged: Vec<StagedAttribute> = schema
        .attributes
        .iter()
        .map(|a| StagedAttribute {
            attribute: a.clone(),
            staging: staging_name(a),
        })
        .collect();
    let migration = Migration {
        target: target.record(),
        staged: staged.clone(),
    };
    let mut changes: Vec<SchemaChange> = staged
        .iter()
        .map(|s| SchemaChange::AddAttribute {
            name: s.staging.clone(),
        })
        .collect();
    changes.push(SchemaChange::SetMigration {
        migration: Some(migration.clone()),
    });
    store.alter_catalogue(catalogue, &changes)?;
    info!(
        catalogue,
        target = fingerprint,
        attributes = staged.len(),
        "reindex started"
    );
    Ok(migration)
}

/// Whether `target` can re-embed `catalogue` from its stored crops: same dimension, every
/// attribute known to it, crops of its input size, every item with a crop.
fn check_target(
    svc: &Service,
    catalogue: &str,
    schema: &CatalogueSchema,
    target: &Model,
) -> Result<()> {
    let record = target.record();
    let name = describe(&record);
    if schema.model.as_ref().map(|m| &m.fingerprint) == Some(&record.fingerprint) {
        return Err(ServiceError::invalid(format!(
            "catalogue {catalogue:?} is already built with model {name}"
        )));
    }
    let card = target.embedder().card();
    if card.embedding_dim != schema.dimension {
        return Err(ServiceError::invalid(format!(
            "model {name} embeds {}-d vectors and catalogue {catalogue:?} holds {}-d ones: \
             a reindex keeps the dimension; create a new catalogue and ingest the originals",
            card.embedding_dim, schema.dimension
        )));
    }
    for a in &schema.attributes {
        if target
            .embedder()
            .attribute_index(schema.model_attribute(a))
            .is_err()
        {
            return Err(ServiceError::invalid(format!(
                "model {name} has no attribute {a:?}, which catalogue {catalogue:?} indexes: \
                 drop the attribute first, or reindex with a model that has it"
            )));
        }
    }
    if let Some(built) = &schema.model {
        if built.input_size != record.input_size {
            let need = if record.input_size > built.input_size {
                "a larger"
            } else {
                "another"
            };
            return Err(ServiceError::invalid(format!(
                "model {name} needs {need} input ({} px) than the {} px crops catalogue \
                 {catalogue:?} keeps: re-embedding from them would not give its vectors; \
                 ingest the original images into a new catalogue instead",
                record.input_size, built.input_size
            )));
        }
    }
    let (without, total) = count_without_crops(svc, catalogue)?;
    if without > 0 {
        return Err(ServiceError::invalid(format!(
            "{without} of {total} items of catalogue {catalogue:?} have no stored crop (stored \
             with index.thumbnails off, or as vectors): a reindex re-embeds from the crops; \
             upsert or ingest those items again with thumbnails on, or delete them"
        )));
    }
    Ok(())
}

fn count_without_crops(svc: &Service, catalogue: &str) -> Result<(u64, u64)> {
    let store = svc.store("a reindex")?;
    let (mut without, mut total) = (0, 0);
    let mut after: Option<ItemId> = None;
    loop {
        let page = store.list(catalogue, after.as_ref(), PAGE)?;
        total += page.items.len() as u64;
        without += page.items.iter().filter(|i| !i.has_thumbnail).count() as u64;
        match page.next_cursor {
            Some(next) => after = Some(next),
            None => return Ok((without, total)),
        }
    }
}

/// Fill the staging attributes of `catalogue`'s recorded migration until none is missing,
/// then switch. Returns the schema after the switch (or as found, when no migration is
/// recorded).
#[tracing::instrument(skip_all, fields(catalogue = %catalogue))]
pub fn run_migration(
    svc: &Service,
    catalogue: &str,
    progress: &Progress,
) -> Result<CatalogueSchema> {
    let store = svc.store("a reindex")?;
    loop {
        let schema = store.schema(catalogue)?;
        let Some(migration) = schema.migration.clone() else {
            return Ok(schema);
        };
        let target = target_model(svc, &migration.target.fingerprint, "a reindex")?;
        if fill_pass(svc, catalogue, &schema, &migration, target, progress, false)? == 0 {
            break;
        }
    }
    let gate = svc.write_gate(catalogue);
    let _writers_held = gate.write().unwrap_or_else(|p| p.into_inner());
    let schema = store.schema(catalogue)?;
    let Some(migration) = schema.migration.clone() else {
        return Ok(schema);
    };
    let target = target_model(svc, &migration.target.fingerprint, "a reindex")?;
    fill_pass(svc, catalogue, &schema, &migration, target, progress, true)?;
    let mut changes = vec![SchemaChange::SetMigration { migration: None }];
    for s in &migration.staged {
        if s.attribute != s.staging {
            changes.push(SchemaChange::DropAttribute {
                name: s.attribute.clone(),
            });
            changes.push(SchemaChange::RenameAttribute {
                from: s.staging.clone(),
                to: s.attribute.clone(),
            });
        }
    }
    changes.push(SchemaChange::SetModel {
        model: Some(migration.target.clone()),
    });
    let schema = store.alter_catalogue(catalogue, &changes)?;
    info!(
        catalogue,
        model = %migration.target.fingerprint,
        seconds = progress.started.elapsed().as_secs_f64(),
        "reindex switched"
    );
    Ok(schema)
}

/// One pass over the catalogue: every item lacking a staging vector gets it from its stored
/// crop. Returns how many items were filled. `gated`: the caller holds the write gate (the
/// last pass); otherwise each write takes it, so that no upsert runs between a check and a
/// fill. A reader thread lists, reads and decodes the next batch of crops while this one
/// runs the forward pass of the current batch and writes its vectors.
fn fill_pass(
    svc: &Service,
    catalogue: &str,
    schema: &CatalogueSchema,
    migration: &Migration,
    target: &Model,
    progress: &Progress,
    gated: bool,
) -> Result<u64> {
    let store = svc.store("a reindex")?;
    progress.passes.fetch_add(1, Ordering::Relaxed);
    progress.done.store(0, Ordering::Relaxed);
    progress
        .total
        .store(store.count(catalogue)?, Ordering::Relaxed);
    let embedder = target.embedder();
    let model_attributes = migration
        .staged
        .iter()
        .map(|s| embedder.attribute_index(schema.model_attribute(&s.attribute)))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    std::thread::scope(|scope| {
        let (send, batches) = std::sync::mpsc::sync_channel::<Result<CropBatch>>(1);
        let reader = std::thread::Builder::new()
            .name(format!("asen-reindex-read-{catalogue}"))
            .spawn_scoped(scope, move || {
                let result = read_crops(svc, catalogue, migration, target, progress, &mut |b| {
                    send.send(Ok(b)).is_ok()
                });
                if let Err(e) = result {
                    let _ = send.send(Err(e));
                }
            })
            .map_err(|e| ServiceError::invalid(format!("cannot start the crop reader: {e}")))?;
        let mut filled = 0u64;
        let written = batches.iter().try_for_each(|batch| -> Result<()> {
            let batch = batch?;
            let models = svc.models("a reindex")?;
            let embedded =
                models.forward(|| embedder.embed_crops(&batch.crops, &model_attributes))?;
            let gate = svc.write_gate(catalogue);
            let _writers_held = (!gated).then(|| gate.write().unwrap_or_else(|p| p.into_inner()));
            for (k, s) in migration.staged.iter().enumerate() {
                let vectors: Vec<(ItemId, Vec<f32>)> = batch
                    .ids
                    .iter()
                    .zip(&embedded)
                    .map(|(id, per)| (id.clone(), per[k].vector.clone()))
                    .collect();
                store.fill_attribute(catalogue, &s.staging, &vectors)?;
            }
            filled += batch.ids.len() as u64;
            progress
                .embedded
                .fetch_add(batch.ids.len() as u64, Ordering::Relaxed);
            progress
                .done
                .fetch_add(batch.listed as u64, Ordering::Relaxed);
            Ok(())
        });
        // On an error here the receiver goes away and the reader stops at its next send.
        drop(batches);
        let _ = reader.join();
        written.map(|()| filled)
    })
}

/// Decoded crops of items that lack a staging vector, one forward pass worth.
struct CropBatch {
    ids: Vec<ItemId>,
    crops: Vec<RgbImage>,
    /// Items of the listing this batch stands for (deleted ones included).
    listed: usize,
}

/// List `catalogue`, and hand each batch of items lacking a staging vector, with their
/// decoded crops, to `deliver` (which says whether to go on). Items already complete count as
/// done at once.
fn read_crops(
    svc: &Service,
    catalogue: &str,
    migration: &Migration,
    target: &Model,
    progress: &Progress,
    deliver: &mut dyn FnMut(CropBatch) -> bool,
) -> Result<()> {
    let store = svc.store("a reindex")?;
    let batch = embedder_batch(svc);
    // Stored crops must be what the target model takes.
    let size = target.embedder().card().input_size;
    let mut after: Option<ItemId> = None;
    loop {
        let page = store.list(catalogue, after.as_ref(), PAGE)?;
        let (todo, complete): (Vec<_>, Vec<_>) = page.items.iter().partition(|item| {
            migration
                .staged
                .iter()
                .any(|s| !item.attributes.contains(&s.staging))
        });
        progress
            .done
            .fetch_add(complete.len() as u64, Ordering::Relaxed);
        for chunk in todo.chunks(batch) {
            let mut crops: Vec<RgbImage> = Vec::with_capacity(chunk.len());
            let mut ids: Vec<ItemId> = Vec::with_capacity(chunk.len());
            for item in chunk {
                // Deleted since it was listed: nothing to fill.
                let Some(jpeg) = store.thumbnail(catalogue, &item.id)? else {
                    continue;
                };
                let crop = thumbnails::decode(&jpeg, catalogue, item.id.as_str())?;
                if crop.dimensions() != (size, size) {
                    return Err(ServiceError::invalid(format!(
                        "the stored crop of item {:?} is {}x{}, model {} takes {size}x{size}: \
                         upsert the item again",
                        item.id.as_str(),
                        crop.width(),
                        crop.height(),
                        target.fingerprint()
                    )));
                }
                crops.push(crop);
                ids.push(item.id.clone());
            }
            if crops.is_empty() {
                progress
                    .done
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                continue;
            }
            let listed = chunk.len();
            if !deliver(CropBatch { ids, crops, listed }) {
                return Ok(());
            }
        }
        match page.next_cursor {
            Some(next) => after = Some(next),
            None => return Ok(()),
        }
    }
}

/// Crops per forward pass of a reindex (`model.batch_size`).
fn embedder_batch(svc: &Service) -> usize {
    svc.reindex_batch.max(1)
}

/// Drop an attribute of a catalogue, with its graph and every item's vector for it.
#[tracing::instrument(skip_all, fields(catalogue = %catalogue, attribute = %attribute))]
pub fn drop_attribute(svc: &Service, catalogue: &str, attribute: &str) -> Result<CatalogueSchema> {
    let gate = svc.write_gate(catalogue);
    let _writers_held = gate.write().unwrap_or_else(|p| p.into_inner());
    refuse_during_migration(svc, catalogue)?;
    let schema = svc.store("dropping an attribute")?.alter_catalogue(
        catalogue,
        &[SchemaChange::DropAttribute {
            name: attribute.to_string(),
        }],
    )?;
    info!(catalogue, attribute, "attribute dropped");
    Ok(schema)
}

/// Rename an attribute of a catalogue. Its vectors and graph stay; the model keeps computing
/// it under its original name ([`CatalogueSchema::model_attribute`]).
#[tracing::instrument(skip_all, fields(catalogue = %catalogue, from = %from, to = %to))]
pub fn rename_attribute(
    svc: &Service,
    catalogue: &str,
    from: &str,
    to: &str,
) -> Result<CatalogueSchema> {
    let gate = svc.write_gate(catalogue);
    let _writers_held = gate.write().unwrap_or_else(|p| p.into_inner());
    refuse_during_migration(svc, catalogue)?;
    let schema = svc.store("renaming an attribute")?.alter_catalogue(
        catalogue,
        &[SchemaChange::RenameAttribute {
            from: from.to_string(),
            to: to.to_string(),
        }],
    )?;
    info!(catalogue, from, to, "attribute renamed");
    Ok(schema)
}

fn refuse_during_migration(svc: &Service, catalogue: &str) -> Result<CatalogueSchema> {
    let schema = svc.store("changing attributes")?.schema(catalogue)?;
    if let Some(m) = &schema.migration {
        return Err(ServiceError::MigrationInProgress {
            catalogue: catalogue.to_string(),
            target: describe(&m.target),
        });
    }
    Ok(schema)
}

/// Start a reindex of `catalogue` to the model `fingerprint` on a background thread, or
/// resume the one its schema records: its status. A job already running towards the same
/// model is returned as it is.
pub fn start(svc: &Service, catalogue: &str, fingerprint: &str) -> Result<MigrationStatus> {
    if let Some(status) = running(svc, catalogue, fingerprint)? {
        return Ok(status);
    }
    begin_reindex(svc, catalogue, fingerprint)?;
    spawn(svc, catalogue, fingerprint)
}

/// Add `attribute` to `catalogue` on a background thread: only its vectors are computed,
/// from the stored crops, and only its graph is built; the other attributes' vectors stay as
/// they are. The attribute comes from `model` (a fingerprint) when given, else from the
/// catalogue's model, else from the one held model that extends the catalogue's with it
/// ([`adding_model`]). Its status is the one of [`status`]. Running it again after a stop
/// resumes.
pub fn start_adding(
    svc: &Service,
    catalogue: &str,
    attribute: &str,
    model: Option<&str>,
) -> Result<MigrationStatus> {
    let schema = svc.store("adding an attribute")?.schema(catalogue)?;
    let fingerprint = match &schema.migration {
        Some(m) if adds(m, attribute) => m.target.fingerprint.clone(),
        _ => adding_model(svc, catalogue, &schema, attribute, model)?
            .fingerprint()
            .to_string(),
    };
    if let Some(status) = running(svc, catalogue, &fingerprint)? {
        return Ok(status);
    }
    begin_adding(svc, catalogue, attribute, &fingerprint)?;
    spawn(svc, catalogue, &fingerprint)
}

/// Whether `migration` is the addition of `attribute` (it is its own staging attribute).
fn adds(migration: &Migration, attribute: &str) -> bool {
    migration.staged.len() == 1
        && migration.staged[0].attribute == attribute
        && migration.staged[0].staging == attribute
}

/// The model that computes `attribute` for `catalogue`: the held model `named`, else the
/// catalogue's model when it has the attribute, else the one held model that extends the
/// catalogue's model with it. A named model must be the catalogue's or extend it, so that the
/// vectors already stored stay its vectors; after the addition the catalogue records it.
fn adding_model<'s>(
    svc: &'s Service,
    catalogue: &str,
    schema: &CatalogueSchema,
    attribute: &str,
    named: Option<&str>,
) -> Result<&'s Arc<Model>> {
    let models = svc.models("adding an attribute")?;
    let live = models.for_catalogue(catalogue, schema.model.as_ref());
    let has = |m: &Model| m.embedder().attribute_index(attribute).is_ok();
    let model = match named {
        Some(fingerprint) => {
            let model = target_model(svc, fingerprint, "adding an attribute")?;
            let fits = match &schema.model {
                Some(built) => {
                    built.fingerprint == model.fingerprint()
                        || model.embedder().card().extends_model(&built.fingerprint)
                }
                None => live.as_ref().is_ok_and(|l| Arc::ptr_eq(l, model)),
            };
            if !fits {
                let built = schema
                    .model
                    .as_ref()
                    .map_or("an unrecorded model".to_string(), describe);
                return Err(ServiceError::invalid(format!(
                    "model {} does not extend model {built}, which built catalogue \
                     {catalogue:?}: an attribute can come only from the catalogue's model or \
                     from one that extends it (asen train --extend)",
                    describe(&model.record())
                )));
            }
            model
        }
        None => match (live, &schema.model) {
            (Ok(model), _) if has(model) => model,
            // No record: only the catalogue's model can add (the checks below say why not).
            (live, None) => live?,
            (_, Some(built)) => {
                let with: Vec<&Arc<Model>> = models
                    .extending(&built.fingerprint)
                    .into_iter()
                    .filter(|m| has(m))
                    .collect();
                match with.as_slice() {
                    [one] => *one,
                    [] => {
                        return Err(ServiceError::invalid(format!(
                            "model {} of catalogue {catalogue:?} has no attribute \
                             {attribute:?} (it has {}), and no model held here extends it \
                             with one: train one with asen train --extend and load it with \
                             --also-model PATH",
                            describe(built),
                            built.attributes.join(", ")
                        )))
                    }
                    several => {
                        return Err(ServiceError::invalid(format!(
                            "models {} all extend the model of catalogue {catalogue:?} with \
                             attribute {attribute:?}: name one in \"model\"",
                            several
                                .iter()
                                .map(|m| m.fingerprint())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )))
                    }
                }
            }
        },
    };
    if !has(model) {
        let record = model.record();
        return Err(ServiceError::invalid(format!(
            "model {} has no attribute {attribute:?}: it can add only its own attributes ({})",
            describe(&record),
            record.attributes.join(", ")
        )));
    }
    let card = model.embedder().card();
    if card.embedding_dim != schema.dimension {
        return Err(ServiceError::invalid(format!(
            "model {} embeds {}-d vectors and catalogue {catalogue:?} holds {}-d ones",
            model.fingerprint(),
            card.embedding_dim,
            schema.dimension
        )));
    }
    if let Some(built) = &schema.model {
        if built.input_size != card.input_size {
            return Err(ServiceError::invalid(format!(
                "model {} takes {} px input and catalogue {catalogue:?} keeps {} px crops",
                model.fingerprint(),
                card.input_size,
                built.input_size
            )));
        }
    }
    Ok(model)
}

/// Start adding `attribute` with the model `fingerprint` (see [`start_adding`]): checks, then
/// one alteration adds it and records the migration (the attribute is its own staging
/// attribute). A migration already recorded for this attribute is resumed.
#[tracing::instrument(skip_all, fields(catalogue = %catalogue, attribute = %attribute))]
pub fn begin_adding(
    svc: &Service,
    catalogue: &str,
    attribute: &str,
    fingerprint: &str,
) -> Result<Migration> {
    let store = svc.store("adding an attribute")?;
    let gate = svc.write_gate(catalogue);
    let _writers_held = gate.write().unwrap_or_else(|p| p.into_inner());
    let schema = store.schema(catalogue)?;
    if let Some(m) = schema.migration {
        if adds(&m, attribute) {
            return Ok(m);
        }
        return Err(ServiceError::MigrationInProgress {
            catalogue: catalogue.to_string(),
            target: describe(&m.target),
        });
    }
    let model = adding_model(svc, catalogue, &schema, attribute, Some(fingerprint))?;
    if schema.attribute_index(attribute).is_some() {
        return Err(ServiceError::invalid(format!(
            "catalogue {catalogue:?} already has attribute {attribute:?}"
        )));
    }
    let (without, total) = count_without_crops(svc, catalogue)?;
    if without > 0 {
        return Err(ServiceError::invalid(format!(
            "{without} of {total} items of catalogue {catalogue:?} have no stored crop: an \
             added attribute is computed from the crops; upsert or ingest those items again \
             with thumbnails on, or delete them"
        )));
    }
    let migration = Migration {
        target: model.record(),
        staged: vec![StagedAttribute {
            attribute: attribute.to_string(),
            staging: attribute.to_string(),
        }],
    };
    store.alter_catalogue(
        catalogue,
        &[
            SchemaChange::AddAttribute {
                name: attribute.to_string(),
            },
            SchemaChange::SetMigration {
                migration: Some(migration.clone()),
            },
        ],
    )?;
    info!(
        catalogue,
        attribute,
        model = model.fingerprint(),
        "adding an attribute"
    );
    Ok(migration)
}

/// This server's running job on `catalogue`: its status when it goes to `fingerprint`, a
/// conflict when it goes elsewhere, `None` when none runs.
fn running(svc: &Service, catalogue: &str, fingerprint: &str) -> Result<Option<MigrationStatus>> {
    match job(svc, catalogue) {
        Some(job) if job.state() == JobState::Running => {
            if job.target == fingerprint {
                Ok(Some(job.status(catalogue)))
            } else {
                Err(ServiceError::MigrationInProgress {
                    catalogue: catalogue.to_string(),
                    target: job.target.clone(),
                })
            }
        }
        _ => Ok(None),
    }
}

/// Run the recorded migration of `catalogue` on a background thread, watched by a new
/// [`Progress`] kept in the service's jobs.
fn spawn(svc: &Service, catalogue: &str, fingerprint: &str) -> Result<MigrationStatus> {
    let progress = Arc::new(Progress::new(fingerprint));
    svc.jobs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(catalogue.to_string(), Arc::clone(&progress));
    let (svc2, name, job) = (svc.clone(), catalogue.to_string(), Arc::clone(&progress));
    std::thread::Builder::new()
        .name(format!("asen-reindex-{catalogue}"))
        .spawn(move || {
            let result = run_migration(&svc2, &name, &job);
            if let Err(e) = &result {
                tracing::warn!(catalogue = %name, error = %e, "reindex stopped");
            }
            job.finish(&result);
        })
        .map_err(|e| ServiceError::invalid(format!("cannot start the reindex thread: {e}")))?;
    Ok(progress.status(catalogue))
}

fn job(svc: &Service, catalogue: &str) -> Option<Arc<Progress>> {
    svc.jobs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(catalogue)
        .cloned()
}

/// The reindex status of `catalogue`: this server's job, else the migration its schema
/// records (`recorded`: not running here), else `none` with the catalogue's model as target.
pub fn status(svc: &Service, catalogue: &str) -> Result<MigrationStatus> {
    let store = svc.store("a reindex status")?;
    let schema = store.schema(catalogue)?;
    if let Some(job) = job(svc, catalogue) {
        return Ok(job.status(catalogue));
    }
    let (state, target) = match (&schema.migration, &schema.model) {
        (Some(m), _) => ("recorded", m.target.fingerprint.clone()),
        (None, Some(model)) => ("none", model.fingerprint.clone()),
        (None, None) => ("none", String::new()),
    };
    Ok(MigrationStatus {
        catalogue: catalogue.to_string(),
        target,
        state: serde_json::json!({ "state": state }),
        done: 0,
        total: store.count(catalogue)?,
        passes: 0,
        items_per_s: 0.0,
        eta_s: None,
    })
}
