//! Deterministic test data: random and clustered vectors, brute-force oracles.

use std::collections::BTreeMap;

use asen_index::{CatalogueSchema, Item, ItemId, LocalStore, StoreOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

pub fn random_vector(rng: &mut StdRng, dim: usize) -> Vec<f32> {
    (0..dim).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

/// Gaussian-mixture-like clustered vectors: a centre plus small noise.
pub fn clustered(rng: &mut StdRng, n: usize, dim: usize, clusters: usize) -> Vec<Vec<f32>> {
    let centres: Vec<Vec<f32>> = (0..clusters).map(|_| random_vector(rng, dim)).collect();
    (0..n)
        .map(|_| {
            let c = &centres[rng.gen_range(0..clusters)];
            c.iter()
                .map(|x| x + rng.gen_range(-0.35f32..0.35))
                .collect()
        })
        .collect()
}

pub fn unit(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (a, b) = (unit(a), unit(b));
    a.iter().zip(&b).map(|(x, y)| x * y).sum()
}

pub fn id(s: impl std::fmt::Display) -> ItemId {
    ItemId::new(s.to_string()).unwrap()
}

pub fn item(name: impl std::fmt::Display, vectors: &[(&str, &[f32])]) -> Item {
    let vectors: BTreeMap<String, Vec<f32>> = vectors
        .iter()
        .map(|(a, v)| (a.to_string(), v.to_vec()))
        .collect();
    Item::new(id(name), vectors)
}

/// A fresh store in a temp dir (kept alive by the returned guard).
pub fn store(options: StoreOptions) -> (tempfile::TempDir, LocalStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path(), options).unwrap();
    (dir, store)
}

pub fn schema(attributes: &[&str], dim: usize) -> CatalogueSchema {
    CatalogueSchema::new(attributes.iter().copied(), dim)
}

/// Indices of the `k` most similar vectors by brute force.
pub fn brute_force(data: &[Vec<f32>], q: &[f32], k: usize) -> Vec<usize> {
    let mut s: Vec<(usize, f32)> = data
        .iter()
        .enumerate()
        .map(|(i, v)| (i, cosine(v, q)))
        .collect();
    s.sort_by(|a, b| b.1.total_cmp(&a.1));
    s.into_iter().take(k).map(|(i, _)| i).collect()
}
