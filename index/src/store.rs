//! The backend-neutral storage trait the service holds as `Arc<dyn CatalogueStore>`.

use crate::error::Result;
use crate::schema::{CatalogueSchema, SchemaChange};
use crate::types::{
    CatalogueInfo, CatalogueStats, FieldValues, Item, ItemId, ItemPage, SearchRequest,
    SearchResults, StoredItem, WriteReceipt,
};

/// Many catalogues of items with one vector per attribute, searchable per attribute.
///
/// Object safe: the HTTP service holds `Arc<dyn CatalogueStore>` and never learns which backend
/// (the local sled + HNSW [`crate::LocalStore`], or a distributed engine later) is behind it.
/// Every method is synchronous and may block; async callers run it on a blocking pool.
/// Implementations are `Send + Sync`: searches run in parallel with each other and with writes.
pub trait CatalogueStore: Send + Sync {
    /// Creates a catalogue; fails with `CatalogueExists` if the name is taken.
    fn create_catalogue(&self, name: &str, schema: &CatalogueSchema) -> Result<()>;

    /// Deletes a catalogue and all its items; fails with `CatalogueNotFound`.
    fn drop_catalogue(&self, name: &str) -> Result<()>;

    /// All catalogues with their schemas and per-attribute counts, by name.
    fn list_catalogues(&self) -> Result<Vec<CatalogueInfo>>;

    /// One catalogue's schema.
    fn schema(&self, catalogue: &str) -> Result<CatalogueSchema>;

    /// Changes a catalogue's schema in place and returns the new one: the `changes` apply in
    /// order, all or none ([`CatalogueSchema::altered`] checks them). A dropped attribute's
    /// graph and every item's vector for it are removed; an added one starts with no
    /// vectors; a renamed one keeps its vectors and graph; every other attribute's vectors
    /// stay bit-identical. Searches and writes that run meanwhile see the schema before or
    /// after, never a mix.
    fn alter_catalogue(&self, catalogue: &str, changes: &[SchemaChange])
        -> Result<CatalogueSchema>;

    /// Gives existing items a vector for `attribute`, which they lack (an attribute added
    /// by [`CatalogueStore::alter_catalogue`], or one an item was stored without). Ids that
    /// are absent, or whose item already has the attribute, are skipped and not counted in
    /// `affected`; payloads, thumbnails and the other vectors are untouched. The batch is
    /// checked first (at most [`crate::MAX_BATCH_ITEMS`], each id once, vectors of the
    /// schema's dimension): on error nothing is written.
    fn fill_attribute(
        &self,
        catalogue: &str,
        attribute: &str,
        vectors: &[(ItemId, Vec<f32>)],
    ) -> Result<WriteReceipt>;

    /// Inserts or replaces items. The whole batch is validated first: on any error nothing is
    /// written. When the receipt says `durable`, the batch survives a crash. Each item's
    /// [`Item::thumbnail`] replaces the stored one (`None` removes it), in the same atomic step
    /// as the item where the backend can: a thumbnail never belongs to an older version of its
    /// item.
    fn upsert(&self, catalogue: &str, items: &[Item]) -> Result<WriteReceipt>;

    /// Removes items; ids not present are ignored (and not counted in `affected`).
    fn delete(&self, catalogue: &str, ids: &[ItemId]) -> Result<WriteReceipt>;

    /// One item, with its vectors when `with_vectors`; `None` if absent.
    fn get(&self, catalogue: &str, id: &ItemId, with_vectors: bool) -> Result<Option<StoredItem>>;

    /// The thumbnail stored with an item ([`Item::thumbnail`]); `None` if the item has none or
    /// does not exist. Fails with `CatalogueNotFound` for an unknown catalogue.
    fn thumbnail(&self, catalogue: &str, id: &ItemId) -> Result<Option<Vec<u8>>>;

    /// Up to `limit` items in id order, starting after `after`.
    fn list(&self, catalogue: &str, after: Option<&ItemId>, limit: usize) -> Result<ItemPage>;

    /// The distinct values of a payload field (dotted path, as in filters) over the live items,
    /// with the number of items holding each, most frequent first, at most `limit`
    /// (1..=[`crate::MAX_FIELD_VALUES`], else `InvalidRequest`); see [`FieldValues`] for the
    /// order and what `truncated` means.
    ///
    /// Only what a [`crate::Filter::Match`] can select is counted: strings, integers and
    /// booleans, and those inside an array field (each distinct element once per item).
    /// Objects, floats and nulls are ignored. Counts are exact: every live item's field is
    /// read. Fails with `CatalogueNotFound` for an unknown catalogue and `InvalidRequest` for
    /// an empty field.
    ///
    /// The provided method pages through [`CatalogueStore::list`] (linear in the catalogue's
    /// size, payloads only); a backend overrides it when it can count faster (the local store
    /// tallies the payloads it holds in memory, a database can aggregate).
    fn field_values(&self, catalogue: &str, field: &str, limit: usize) -> Result<FieldValues> {
        crate::filter::check_field_values(field, limit)?;
        let mut tally = crate::filter::FieldTally::new(field);
        let mut after = None;
        loop {
            let page = self.list(catalogue, after.as_ref(), crate::MAX_BATCH_ITEMS)?;
            for item in &page.items {
                tally.add(&item.payload);
            }
            match page.next_cursor {
                Some(next) => after = Some(next),
                None => return Ok(tally.finish(limit)),
            }
        }
    }

    /// Number of live items.
    fn count(&self, catalogue: &str) -> Result<u64>;

    /// Searches by vector, weighted vectors, stored item, or recommendation; see
    /// [`SearchRequest`]. Scores are cosine similarities (weighted sums), higher is better.
    fn search(&self, catalogue: &str, request: &SearchRequest) -> Result<SearchResults>;

    /// Counts and graph statistics.
    fn stats(&self, catalogue: &str) -> Result<CatalogueStats>;

    /// Makes every acknowledged write durable (needed only with deferred flushing).
    fn flush(&self) -> Result<()>;
}
