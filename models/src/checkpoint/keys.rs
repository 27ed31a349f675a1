//! Official checkpoint key names -> asen's normalised names, and variant
//! detection from the keys.
//!
//! Normalised layout (what `model.safetensors` stores and what the heads ask
//! their `VarBuilder` for):
//! * backbone tensors under `backbonenet.` (ResNet-50 names, `conv1`, `bn1`,
//!   `layer1.0.conv1`, ...);
//! * head tensors at the root, with the official ASEN names of each variant
//!   (`mask_fc1.weight`, `conv1.weight`, `attr_embedding.weight`, `fc1.bias`, ...).
//!
//! Rules, applied in order:
//! 1. a leading `module.` (DataParallel) is dropped;
//! 2. asen v1/v2: the `embeddingnet.` prefix is dropped;
//! 3. ASEN++: `choices.global.attrnet.X` and `choices.global.attnnet.X` become `X`
//!    (the two sub-networks have no name in common), `choices.global.basenet.X`
//!    becomes `backbonenet.X`; other `choices.*` branches (the local branch) are ignored;
//! 4. ignored: `backbonenet.fc.*` (unused ImageNet classifier), `backbonenet.layer4.*`
//!    and every `*.num_batches_tracked`.

use crate::head::HeadKind;

/// Map one raw checkpoint key to its normalised name, or `None` when the key
/// is ignored on purpose.
pub fn normalise_key(raw: &str) -> Option<String> {
    let key = raw.strip_prefix("module.").unwrap_or(raw);
    let key = if let Some(rest) = key.strip_prefix("embeddingnet.") {
        rest.to_owned()
    } else if let Some(rest) = key.strip_prefix("choices.global.") {
        if let Some(r) = rest.strip_prefix("attrnet.") {
            r.to_owned()
        } else if let Some(r) = rest.strip_prefix("attnnet.") {
            r.to_owned()
        } else if let Some(r) = rest.strip_prefix("basenet.") {
            format!("backbonenet.{r}")
        } else {
            rest.to_owned()
        }
    } else if key.starts_with("choices.") {
        return None;
    } else {
        key.to_owned()
    };
    if key.ends_with(".num_batches_tracked")
        || key.starts_with("backbonenet.fc.")
        || key.starts_with("backbonenet.layer4.")
    {
        return None;
    }
    Some(key)
}

/// Which ASEN variant a set of raw checkpoint keys belongs to: v1
/// (`mask_fc1` + `conv2`), v2 (`attr_embedding` + `img_bn1`), the ASEN++
/// global branch (`choices.global.` prefix), or one of asen's own heads
/// saved under normalised names (`masks` + `embed` for CSN, a lone `fc` for
/// the global baseline).
pub fn detect_variant<'a>(raw_keys: impl IntoIterator<Item = &'a str>) -> Option<HeadKind> {
    let mut pp = false;
    let mut names = std::collections::HashSet::new();
    for raw in raw_keys {
        let k = raw.strip_prefix("module.").unwrap_or(raw);
        if k.starts_with("choices.global.") {
            pp = true;
        }
        if let Some(n) = normalise_key(raw) {
            names.insert(n);
        }
    }
    let has = |k: &str| names.contains(k);
    // asen's own baselines are recognised only when nothing else is there, so
    // that e.g. a torchvision ResNet state dict (`fc.weight` at the root) is not
    // taken for a global head.
    let only = |allowed: &[&str]| {
        names
            .iter()
            .all(|n| n.starts_with("backbonenet.") || allowed.contains(&n.as_str()))
    };
    if pp {
        Some(HeadKind::AsenPpGlobal)
    } else if has("mask_fc1.weight") && has("conv2.weight") {
        Some(HeadKind::AsenV1)
    } else if has("attr_embedding.weight") && has("img_bn1.weight") {
        Some(HeadKind::AsenV2)
    } else if has("attr_embedding.weight") && has("conv.weight") {
        Some(HeadKind::AsenPpGlobal)
    } else if has("masks.weight")
        && has("embed.weight")
        && only(&["masks.weight", "embed.weight", "embed.bias"])
    {
        Some(HeadKind::Csn)
    } else if has("fc.weight") && only(&["fc.weight", "fc.bias"]) {
        Some(HeadKind::Global)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_official_prefixes() {
        assert_eq!(
            normalise_key("embeddingnet.mask_fc1.weight").as_deref(),
            Some("mask_fc1.weight")
        );
        assert_eq!(
            normalise_key("module.embeddingnet.backbonenet.layer3.5.bn3.running_var").as_deref(),
            Some("backbonenet.layer3.5.bn3.running_var")
        );
        assert_eq!(
            normalise_key("choices.global.attrnet.attr_embedding.weight").as_deref(),
            Some("attr_embedding.weight")
        );
        assert_eq!(
            normalise_key("choices.global.attnnet.conv.bias").as_deref(),
            Some("conv.bias")
        );
        assert_eq!(
            normalise_key("choices.global.basenet.layer1.0.conv1.weight").as_deref(),
            Some("backbonenet.layer1.0.conv1.weight")
        );
    }

    #[test]
    fn ignores_unused_keys() {
        for k in [
            "embeddingnet.backbonenet.fc.weight",
            "embeddingnet.backbonenet.fc.bias",
            "embeddingnet.backbonenet.layer4.0.conv1.weight",
            "embeddingnet.backbonenet.bn1.num_batches_tracked",
            "embeddingnet.img_bn1.num_batches_tracked",
            "choices.local.attnnet.conv.weight",
        ] {
            assert_eq!(normalise_key(k), None, "{k}");
        }
    }

    #[test]
    fn detects_variants() {
        let v1 = [
            "embeddingnet.mask_fc1.weight",
            "embeddingnet.conv2.weight",
            "embeddingnet.fc1.weight",
        ];
        assert_eq!(detect_variant(v1), Some(HeadKind::AsenV1));
        let v2 = [
            "embeddingnet.attr_embedding.weight",
            "embeddingnet.img_bn1.weight",
        ];
        assert_eq!(detect_variant(v2), Some(HeadKind::AsenV2));
        let pp = [
            "choices.global.attrnet.attr_embedding.weight",
            "choices.global.attnnet.conv.weight",
        ];
        assert_eq!(detect_variant(pp), Some(HeadKind::AsenPpGlobal));
        assert_eq!(
            detect_variant(["masks.weight", "embed.weight"]),
            Some(HeadKind::Csn)
        );
        assert_eq!(
            detect_variant(["fc.weight", "fc.bias"]),
            Some(HeadKind::Global)
        );
        assert_eq!(detect_variant(["backbonenet.conv1.weight"]), None);
        // A plain torchvision ResNet state dict is no head at all.
        assert_eq!(
            detect_variant(["conv1.weight", "layer1.0.conv1.weight", "fc.weight"]),
            None
        );
    }
}
