//! The fingerprint of a saved model: what a catalogue records as the model that built it,
//! and what a model that extends another records as its base.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::card::{CARD_FILE, WEIGHTS_FILE};
use crate::signature::SIGNATURE_FILE;

/// Hex characters kept of the sha256.
pub const FINGERPRINT_CHARS: usize = 16;

/// sha256 over every file that defines a model, shortened to [`FINGERPRINT_CHARS`] hex
/// characters: for a directory, `card.json`, `model.safetensors` and the copy signature's
/// weights when present (each as name, length, bytes); for a checkpoint, the file itself.
pub fn fingerprint(path: &Path) -> std::io::Result<String> {
    let files: Vec<std::path::PathBuf> = if path.is_dir() {
        let mut files = vec![path.join(CARD_FILE), path.join(WEIGHTS_FILE)];
        let signature = path.join(SIGNATURE_FILE);
        if signature.is_file() {
            files.push(signature);
        }
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut hasher = Sha256::new();
    for file in files {
        let bytes = std::fs::read(&file)?;
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
        hasher.update(name.unwrap_or_default().as_bytes());
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    let hex: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(hex[..FINGERPRINT_CHARS].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_fingerprint_changes_with_the_signature_file() {
        let dir = std::env::temp_dir().join(format!("asen-fp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(CARD_FILE), b"{}").unwrap();
        std::fs::write(dir.join(WEIGHTS_FILE), b"w").unwrap();
        let without = fingerprint(&dir).unwrap();
        std::fs::write(dir.join(SIGNATURE_FILE), b"s").unwrap();
        let with = fingerprint(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_ne!(without, with);
        assert_eq!(without.len(), FINGERPRINT_CHARS);
    }
}
