//! One module per resource; handlers extract, call one service function, wrap the answer.

pub mod catalogues;
pub mod compare;
pub mod explain;
pub mod health;
pub mod items;
pub mod lifecycle;
pub mod model;
pub mod search;

use base64::Engine;

use super::error::ApiError;

/// Decode a base64 image (standard alphabet, optional `data:...;base64,` prefix); `field`
/// names it in errors (`items[2].image`).
pub(crate) fn image_from_base64(field: &str, text: &str) -> Result<Vec<u8>, ApiError> {
    let data = match text.split_once(";base64,") {
        Some((prefix, data)) if prefix.starts_with("data:") => data,
        _ => text,
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| ApiError::BadRequest(format!("{field}: invalid base64 ({e})")))?;
    if bytes.is_empty() {
        return Err(ApiError::BadRequest(format!("{field}: the image is empty")));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_images() {
        assert_eq!(super::image_from_base64("f", "aGk=").unwrap(), b"hi");
        assert_eq!(
            super::image_from_base64("f", "data:image/png;base64,aGk=").unwrap(),
            b"hi"
        );
        let e = super::image_from_base64("items[1].image", "%%%").unwrap_err();
        assert!(
            e.to_string().starts_with("items[1].image: invalid base64"),
            "{e}"
        );
        assert!(super::image_from_base64("f", "").is_err());
    }
}
