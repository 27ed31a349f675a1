//! Multi-attribute scores, group-by, search by item, recommend, deletes.

use std::collections::HashSet;

use asen_index::{
    AttributeWeight, CatalogueStore, GroupBy, Query, SearchRequest, SearchResults, StoreOptions,
    WeightedVector,
};
use serde_json::json;

use crate::data::*;

const DIM: usize = 24;

/// Per item: collar vector, optional colour vector.
type Vectors = Vec<(Vec<f32>, Option<Vec<f32>>)>;

/// 2,000 items with "collar" and "colour"; every 10th has no "colour"; product = n / 5.
fn two_attribute_store() -> (tempfile::TempDir, asen_index::LocalStore, Vectors) {
    let (d, store) = store(StoreOptions::default());
    let mut r = rng(3);
    store
        .create_catalogue("c", &schema(&["collar", "colour"], DIM))
        .unwrap();
    let mut data = Vec::new();
    let mut items = Vec::new();
    for n in 0..2000 {
        let collar = random_vector(&mut r, DIM);
        let colour = (n % 10 != 0).then(|| random_vector(&mut r, DIM));
        let mut vs: Vec<(&str, &[f32])> = vec![("collar", &collar)];
        if let Some(c) = &colour {
            vs.push(("colour", c));
        }
        let mut it = item(n, &vs);
        it.payload = json!({"product": n / 5}).as_object().unwrap().clone();
        items.push(it);
        data.push((collar, colour));
    }
    store.upsert("c", &items).unwrap();
    (d, store, data)
}

fn weighted_truth(data: &[(Vec<f32>, Option<Vec<f32>>)], i: usize, q1: &[f32], q2: &[f32]) -> f32 {
    0.7 * cosine(&data[i].0, q1) + 0.3 * data[i].1.as_ref().map_or(0.0, |c| cosine(c, q2))
}

#[test]
fn weighted_scores_equal_brute_force_sums() {
    let (_d, store, data) = two_attribute_store();
    let mut r = rng(9);
    for _ in 0..10 {
        let q1 = random_vector(&mut r, DIM);
        let q2 = random_vector(&mut r, DIM);
        let req = SearchRequest::new(
            Query::Weighted(vec![
                WeightedVector {
                    attribute: "collar".into(),
                    vector: q1.clone(),
                    weight: 0.7,
                },
                WeightedVector {
                    attribute: "colour".into(),
                    vector: q2.clone(),
                    weight: 0.3,
                },
            ]),
            10,
        );
        let hits = store.search("c", &req).unwrap().into_hits();
        assert_eq!(hits.len(), 10);
        for h in &hits {
            let i: usize = h.id.as_str().parse().unwrap();
            let truth = weighted_truth(&data, i, &q1, &q2);
            assert!((h.score - truth).abs() < 1e-4, "{} vs {truth}", h.score);
            assert!((h.attribute_scores["collar"] - cosine(&data[i].0, &q1)).abs() < 1e-4);
        }
        // the true best item should be among the hits
        let best = (0..data.len())
            .max_by(|a, b| {
                weighted_truth(&data, *a, &q1, &q2).total_cmp(&weighted_truth(&data, *b, &q1, &q2))
            })
            .unwrap();
        assert!(hits.iter().any(|h| h.id.as_str() == best.to_string()));
    }
}

/// Item indices by descending cosine to `q` on "collar" (ties by index), as the store ranks.
fn collar_ranking(data: &Vectors, q: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..data.len()).collect();
    order.sort_by(|a, b| {
        cosine(&data[*b].0, q)
            .total_cmp(&cosine(&data[*a].0, q))
            .then(a.cmp(b))
    });
    order
}

#[test]
fn one_attribute_search_returns_the_exact_top_k_in_order_with_payloads() {
    let (_d, store, data) = two_attribute_store();
    let mut r = rng(12);
    for _ in 0..5 {
        let q = random_vector(&mut r, DIM);
        let mut req = SearchRequest::vector("collar", q.clone(), 10);
        req.ef_search = Some(400);
        req.with_payload = true;
        let hits = store.search("c", &req).unwrap().into_hits();
        let got: Vec<usize> = hits
            .iter()
            .map(|h| h.id.as_str().parse().unwrap())
            .collect();
        assert_eq!(got, collar_ranking(&data, &q)[..10]);
        for (h, i) in hits.iter().zip(&got) {
            assert!((h.score - cosine(&data[*i].0, &q)).abs() < 1e-4);
            assert_eq!(h.attribute_scores.len(), 1);
            assert_eq!(h.attribute_scores["collar"], h.score);
            assert_eq!(h.payload.as_ref().unwrap()["product"], json!(i / 5));
        }
    }
}

#[test]
fn one_attribute_search_stops_at_the_score_threshold() {
    let (_d, store, data) = two_attribute_store();
    let mut r = rng(13);
    let q = random_vector(&mut r, DIM);
    let ranking = collar_ranking(&data, &q);
    // Halfway between the 4th and 5th best: exactly 4 hits pass, though 10 are asked for.
    let threshold = (cosine(&data[ranking[3]].0, &q) + cosine(&data[ranking[4]].0, &q)) / 2.0;
    let mut req = SearchRequest::vector("collar", q, 10);
    req.ef_search = Some(400);
    req.score_threshold = Some(threshold);
    let hits = store.search("c", &req).unwrap().into_hits();
    let got: Vec<usize> = hits
        .iter()
        .map(|h| h.id.as_str().parse().unwrap())
        .collect();
    assert_eq!(got, ranking[..4]);
}

#[test]
fn group_by_keeps_group_sizes_and_exact_scores() {
    let (_d, store, data) = two_attribute_store();
    let mut r = rng(4);
    let q = random_vector(&mut r, DIM);
    let mut req = SearchRequest::vector("collar", q.clone(), 5);
    req.group_by = Some(GroupBy {
        field: "product".into(),
        group_size: 2,
    });
    req.with_payload = true;
    let SearchResults::Groups(groups) = store.search("c", &req).unwrap() else {
        panic!("expected groups")
    };
    assert_eq!(groups.len(), 5);
    let mut keys = HashSet::new();
    for g in &groups {
        assert!(keys.insert(g.key.to_string()), "groups are distinct");
        assert!(!g.hits.is_empty() && g.hits.len() <= 2);
        for h in &g.hits {
            let i: usize = h.id.as_str().parse().unwrap();
            assert_eq!(json!(i / 5), g.key);
            assert_eq!(h.payload.as_ref().unwrap()["product"], g.key);
            assert!((h.score - cosine(&data[i].0, &q)).abs() < 1e-4);
        }
    }
    for w in groups.windows(2) {
        assert!(w[0].hits[0].score >= w[1].hits[0].score);
    }
}

#[test]
fn search_by_item_excludes_itself_and_recommend_excludes_examples() {
    let (_d, store, data) = two_attribute_store();
    let collar = vec![AttributeWeight {
        attribute: "collar".into(),
        weight: 1.0,
    }];
    let req = SearchRequest::new(
        Query::Item {
            id: id(17),
            attributes: collar.clone(),
        },
        5,
    );
    let hits = store.search("c", &req).unwrap().into_hits();
    assert_eq!(hits.len(), 5);
    assert!(hits.iter().all(|h| h.id.as_str() != "17"));
    let truth = brute_force(
        &data.iter().map(|d| d.0.clone()).collect::<Vec<_>>(),
        &data[17].0,
        2,
    );
    assert_eq!(hits[0].id.as_str(), truth[1].to_string());

    let req = SearchRequest::new(
        Query::Recommend {
            positive: vec![id(1), id(2)],
            negative: vec![id(3)],
            attributes: collar,
        },
        10,
    );
    let hits = store.search("c", &req).unwrap().into_hits();
    assert_eq!(hits.len(), 10);
    assert!(hits
        .iter()
        .all(|h| !["1", "2", "3"].contains(&h.id.as_str())));
    // item 10 has no colour: asking for it is a typed error
    let colour = vec![AttributeWeight {
        attribute: "colour".into(),
        weight: 1.0,
    }];
    let err = store
        .search(
            "c",
            &SearchRequest::new(
                Query::Item {
                    id: id(10),
                    attributes: colour,
                },
                5,
            ),
        )
        .unwrap_err();
    assert!(
        matches!(err, asen_index::IndexError::MissingAttribute { .. }),
        "{err}"
    );
}

#[test]
fn deleted_and_replaced_items_never_come_back() {
    let options = StoreOptions {
        compaction_min_points: 100,
        ..StoreOptions::default()
    };
    let (_d, store) = store(options);
    let mut r = rng(21);
    store.create_catalogue("c", &schema(&["a"], DIM)).unwrap();
    let data: Vec<Vec<f32>> = (0..1000).map(|_| random_vector(&mut r, DIM)).collect();
    let items: Vec<_> = data
        .iter()
        .enumerate()
        .map(|(i, v)| item(i, &[("a", v)]))
        .collect();
    store.upsert("c", &items).unwrap();
    // delete every odd item; replace items 0..100 with new vectors
    let odd: Vec<_> = (0..1000).filter(|i| i % 2 == 1).map(id).collect();
    assert_eq!(store.delete("c", &odd).unwrap().affected, 500);
    assert_eq!(store.delete("c", &odd).unwrap().affected, 0);
    let replaced: Vec<_> = (0..100)
        .step_by(2)
        .map(|i| item(i, &[("a", &random_vector(&mut r, DIM))]))
        .collect();
    store.upsert("c", &replaced).unwrap();
    assert_eq!(store.count("c").unwrap(), 500);
    for round in 0..2 {
        for (i, v) in data.iter().enumerate().take(300) {
            let hits = store
                .search("c", &SearchRequest::vector("a", v.clone(), 20))
                .unwrap()
                .into_hits();
            assert_eq!(hits.len(), 20);
            for h in &hits {
                let n: usize = h.id.as_str().parse().unwrap();
                assert!(
                    n.is_multiple_of(2),
                    "deleted item {n} came back (round {round})"
                );
            }
            if i % 2 == 0 && i >= 100 {
                assert_eq!(hits[0].id.as_str(), i.to_string());
            }
            if i % 2 == 0 && i < 100 {
                // the old vector of a replaced item must not score as itself
                assert!(hits
                    .iter()
                    .all(|h| h.id.as_str() != i.to_string() || h.score < 0.999));
            }
        }
        store.wait_for_compactions();
        store.compact("c").unwrap();
        let stats = store.stats("c").unwrap();
        assert_eq!(stats.attributes[0].tombstones, 0, "after compaction");
        assert!(store.check_consistency("c").unwrap().is_consistent());
    }
}
