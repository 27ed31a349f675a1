//! `GET /openapi.json`, generated from the handler annotations with utoipa.

use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;

use super::routes;

/// The OpenAPI document of every route.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "asen",
        description = "Attribute-specific similarity search for fashion images"
    ),
    paths(
        routes::health::healthz,
        routes::health::readyz,
        routes::health::metrics,
        routes::model::model,
        routes::catalogues::list,
        routes::catalogues::create,
        routes::catalogues::get,
        routes::catalogues::drop,
        routes::catalogues::field_values,
        routes::items::upsert,
        routes::items::list,
        routes::items::get,
        routes::items::delete,
        routes::items::image,
        routes::search::search,
        routes::compare::compare,
        routes::compare::copies,
        routes::explain::explain,
        routes::explain::heatmap,
        routes::lifecycle::start,
        routes::lifecycle::status,
        routes::lifecycle::add_attribute,
        routes::lifecycle::drop_attribute,
        routes::lifecycle::rename_attribute,
        openapi_json,
    ),
    components(schemas(
        super::error::ErrorEnvelope,
        super::error::ErrorStatus,
        crate::service::ModelInfo,
        crate::service::AttributeInfo,
        crate::service::catalogues::NewCatalogue,
        crate::service::catalogues::CatalogueDetails,
        crate::service::compare::Comparison,
        crate::service::compare::AttributeComparison,
        crate::service::compare::CopyHit,
        crate::service::explain::AttentionGrid,
        routes::items::UpsertBody,
        routes::items::ItemBody,
        routes::search::SearchBody,
        routes::compare::CompareBody,
        routes::compare::SubjectBody,
        routes::compare::CopiesBody,
        routes::explain::ExplainBody,
        routes::lifecycle::ReindexBody,
        routes::lifecycle::RenameBody,
        routes::lifecycle::AddAttributeBody,
        crate::service::lifecycle::MigrationStatus,
    ))
)]
pub struct ApiDoc;

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "health",
    responses((status = 200, description = "OpenAPI 3.1 document")))]
pub async fn openapi_json() -> Response {
    axum::Json(ApiDoc::openapi()).into_response()
}
