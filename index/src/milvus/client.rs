//! The only file that knows milvus-sdk-rust: a blocking facade over its async `ClientV2`, on a
//! tokio runtime owned by the store. Rows cross as JSON objects; SDK errors stop here and leave
//! as [`IndexError::Backend`].

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use milvus::v2::prelude as sdk;
use serde_json::{Map, Value};

use crate::error::{IndexError, Result};

/// One row as JSON: field name to value.
pub(crate) type Row = Map<String, Value>;

/// Where and how to connect (parsed from the store URL in `mod.rs`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Endpoint {
    /// `http://host:port` or `https://host:port`.
    pub uri: String,
    pub tls: bool,
    pub token: Option<String>,
    pub database: Option<String>,
    pub timeout: Duration,
}

/// A field of a collection asen creates.
pub(crate) enum Field<'a> {
    /// The VarChar primary key.
    Key(&'a str, u32),
    Text(&'a str, u32),
    Json(&'a str),
    /// A float vector with an HNSW (M, ef_construction) inner-product index.
    Vector(&'a str, usize, usize, usize),
}

pub(crate) struct Client {
    runtime: tokio::runtime::Runtime,
    client: sdk::ClientV2,
}

fn backend(operation: &str, e: impl std::fmt::Display) -> IndexError {
    IndexError::Backend {
        operation: operation.to_string(),
        detail: e.to_string(),
    }
}

/// Every read is Strong: it sees every write acknowledged before it, by any asen process.
const READ: sdk::ConsistencyLevel = sdk::ConsistencyLevel::Strong;

impl Client {
    pub(crate) fn connect(endpoint: &Endpoint) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("asen-milvus")
            .enable_all()
            .build()
            .map_err(|e| backend("start runtime", e))?;
        let mut config = sdk::ConnectConfig::new()
            .uri(endpoint.uri.clone())
            .secure(endpoint.tls)
            .rpc_timeout(endpoint.timeout)
            .connect_timeout(endpoint.timeout);
        if let Some(t) = &endpoint.token {
            config = config.token(t.clone());
        }
        if let Some(db) = &endpoint.database {
            config = config.database(db.clone());
        }
        let client = runtime
            .block_on(sdk::ClientV2::new(&config))
            .map_err(|e| backend(&format!("connect to {}", endpoint.uri), e))?;
        Ok(Client { runtime, client })
    }

    /// Runs one SDK call to completion on the store's runtime. The caller is a plain thread
    /// (the service calls the store from tokio's blocking pool), never a runtime worker.
    fn run<T, E: std::fmt::Display>(
        &self,
        operation: &str,
        f: impl Future<Output = std::result::Result<T, E>>,
    ) -> Result<T> {
        self.runtime.block_on(f).map_err(|e| backend(operation, e))
    }

    pub(crate) fn has_collection(&self, name: &str) -> Result<bool> {
        let r = self.run("has collection", async {
            let req = sdk::HasCollectionRequest::builder()
                .collection_name(name)
                .build()?;
            self.client.has_collection(req).await
        })?;
        Ok(r.exists())
    }

    /// Creates a collection with Strong consistency, indexes its vector field and loads it.
    pub(crate) fn create_collection(&self, name: &str, fields: &[Field]) -> Result<()> {
        let mut schema = sdk::CollectionSchema::new();
        let mut index = None;
        for f in fields {
            let field = sdk::FieldSchema::new();
            schema = schema.add_field(match *f {
                Field::Key(n, len) => field
                    .name(n)
                    .data_type(sdk::DataType::VarChar)
                    .max_length(len)
                    .primary_key(true),
                Field::Text(n, len) => field
                    .name(n)
                    .data_type(sdk::DataType::VarChar)
                    .max_length(len),
                Field::Json(n) => field.name(n).data_type(sdk::DataType::Json),
                Field::Vector(n, dim, m, ef_construction) => {
                    index = Some(
                        sdk::IndexParam::new()
                            .field_name(n)
                            .index_type(sdk::IndexType::Hnsw)
                            .metric_type(sdk::MetricType::Ip)
                            .extra_params(HashMap::from([
                                ("M".to_string(), m.to_string()),
                                ("efConstruction".to_string(), ef_construction.to_string()),
                            ])),
                    );
                    field
                        .name(n)
                        .data_type(sdk::DataType::FloatVector)
                        .dimension(dim as u32)
                }
            });
        }
        self.run("create collection", async {
            let req = sdk::CreateCollectionRequest::builder()
                .collection_name(name)
                .schema(schema)
                .consistency_level(READ)
                .build()?;
            self.client.create_collection(req).await
        })?;
        // The collection is empty: the index is built at once, nothing to wait for (and
        // Milvus Lite does not implement the index-state call the SDK would poll).
        if let Some(index) = index {
            self.run("create index", async {
                let req = sdk::CreateIndexRequest::builder()
                    .collection_name(name)
                    .index_param(index)
                    .sync(false)
                    .build()?;
                self.client.create_index(req).await
            })?;
        }
        self.load(name)
    }

    /// Loads a collection into the query nodes (after creation, and after a Milvus restart,
    /// which leaves collections released).
    fn load(&self, name: &str) -> Result<()> {
        let loaded = self.run("load collection", async {
            let req = sdk::LoadCollectionRequest::builder()
                .collection_name(name)
                .build()?;
            self.client.load_collection(req).await
        });
        match loaded {
            // Milvus Lite loads at once and does not implement the progress call the SDK polls.
            Err(IndexError::Backend { detail, .. }) if detail.contains("Unimplemented") => Ok(()),
            other => other,
        }
    }

    /// Runs a read; if Milvus answers that the collection is released (it was restarted, or
    /// another process released it), loads it and runs the read once more.
    fn reloading<T>(&self, collection: &str, read: impl Fn() -> Result<T>) -> Result<T> {
        match read() {
            Err(IndexError::Backend { detail, .. })
                if detail.contains("call load()") || detail.contains("not loaded") =>
            {
                self.load(collection)?;
                read()
            }
            other => other,
        }
    }

    /// Drops a collection; one that does not exist is not an error.
    pub(crate) fn drop_collection(&self, name: &str) -> Result<()> {
        if !self.has_collection(name)? {
            return Ok(());
        }
        self.run("drop collection", async {
            let req = sdk::DropCollectionRequest::builder()
                .collection_name(name)
                .build()?;
            self.client.drop_collection(req).await
        })
    }

    /// Inserts or replaces rows by primary key; returns Milvus's timestamp of the write.
    pub(crate) fn upsert(&self, collection: &str, rows: Vec<Row>) -> Result<u64> {
        if rows.is_empty() {
            return Ok(0);
        }
        let r = self.run("upsert", async {
            let insert = sdk::InsertRequest::builder()
                .collection_name(collection)
                .rows(rows.into_iter().map(Value::Object))
                .build()?;
            let req = sdk::UpsertRequest::builder().insert(insert).build()?;
            self.client.upsert(req).await
        })?;
        Ok(r.timestamp())
    }

    /// Deletes the rows matching a boolean expression; returns Milvus's timestamp.
    pub(crate) fn delete(&self, collection: &str, filter: &str) -> Result<u64> {
        let r = self.run("delete", async {
            let req = sdk::DeleteRequest::builder()
                .collection_name(collection)
                .filter(filter)
                .build()?;
            self.client.delete(req).await
        })?;
        Ok(r.timestamp())
    }

    /// Rows by primary key `key` (any order; absent keys are left out). A plain query with the
    /// keys escaped into the expression: the SDK's `get` sends a filter template, which not
    /// every server (Milvus Lite) reads.
    pub(crate) fn get(
        &self,
        collection: &str,
        key: &str,
        keys: &[String],
        fields: &[&str],
    ) -> Result<Vec<Row>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let filter = super::expr::key_in(key, keys);
        self.query(collection, &filter, fields, keys.len())
    }

    /// Rows matching a boolean expression, at most `limit` (Milvus caps it at 16384).
    pub(crate) fn query(
        &self,
        collection: &str,
        filter: &str,
        fields: &[&str],
        limit: usize,
    ) -> Result<Vec<Row>> {
        self.reloading(collection, || {
            let r = self.run("query", async {
                let req = sdk::QueryRequest::builder()
                    .collection_name(collection)
                    .filter(filter)
                    .output_fields(fields.iter().copied())
                    .limit(limit as i64)
                    .consistency_level(READ)
                    .build()?;
                self.client.query(req).await
            })?;
            rows(r.results().rows(), "query")
        })
    }

    /// Number of rows matching an expression (`""`: all).
    pub(crate) fn count(&self, collection: &str, filter: &str) -> Result<u64> {
        let rows = self.reloading(collection, || {
            let r = self.run("count", async {
                let req = sdk::QueryRequest::builder()
                    .collection_name(collection)
                    .filter(filter)
                    .output_fields(["count(*)"])
                    .consistency_level(READ)
                    .build()?;
                self.client.query(req).await
            })?;
            rows(r.results().rows(), "count")
        })?;
        rows.first()
            .and_then(|r| r.get("count(*)"))
            .and_then(Value::as_u64)
            .ok_or_else(|| backend("count", "no count(*) in the reply"))
    }

    /// The `limit` rows nearest `vector` by inner product under `filter`, with their scores.
    // One argument per field of the SDK's search request.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn search(
        &self,
        collection: &str,
        field: &str,
        vector: &[f32],
        limit: usize,
        ef: usize,
        filter: &str,
        fields: &[&str],
    ) -> Result<Vec<(Row, f32)>> {
        let r = self.reloading(collection, || {
            self.run("search", async {
                let req = sdk::SearchRequest::builder()
                    .collection_name(collection)
                    .vector_field(field)
                    .vectors(sdk::SearchVectors::Float(vec![vector.to_vec()]))
                    .filter(filter)
                    .output_fields(fields.iter().copied())
                    .limit(limit as i64)
                    .extra_params(HashMap::from([("ef".to_string(), ef.to_string())]))
                    .consistency_level(READ)
                    .build()?;
                self.client.search(req).await
            })
        })?;
        let mut out = Vec::new();
        for result in r.results() {
            let iter = result.rows().map_err(|e| backend("search", e))?;
            for row in iter {
                let score = row.get_f32("score").map_err(|e| backend("search", e))?;
                let fields = row.to_entity_row().map_err(|e| backend("search", e))?;
                out.push((fields, score));
            }
        }
        Ok(out)
    }

    /// Seals the collections' growing segments into object storage and waits for it.
    pub(crate) fn flush(&self, collections: &[String]) -> Result<()> {
        if collections.is_empty() {
            return Ok(());
        }
        self.run("flush", async {
            let req = sdk::FlushRequest::builder()
                .collection_names(collections.iter().cloned())
                .wait_flushed_ms(60_000)
                .build()?;
            self.client.flush(req).await
        })?;
        Ok(())
    }
}

fn rows<'a, R: std::fmt::Display>(
    iter: std::result::Result<sdk::ResultRowIter<'a>, R>,
    operation: &str,
) -> Result<Vec<Row>> {
    iter.map_err(|e| backend(operation, e))?
        .map(|row| row.to_entity_row().map_err(|e| backend(operation, e)))
        .collect()
}
