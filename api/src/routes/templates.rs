//! `/v1/templates`: the caller's prompt templates, and the global ones an operator made.

use axum::extract::State;
use axum::http::header::LOCATION;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use kiln_shared::domain::{NewTemplate, Template};
use kiln_shared::ports::StoreError;
use serde::Serialize;

use super::ApiPath;
use crate::view::BaseUrl;
use crate::{templates, ApiError, AppState, Caller, JsonBody};

/// Whose a template is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The caller's own.
    User,
    /// Everyone's, made by an operator.
    Global,
}

/// A template as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TemplateView {
    /// Its name.
    pub name: String,
    /// Whose it is.
    pub scope: Scope,
    /// Character fragment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub character: Option<String>,
    /// Style fragment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub style: Option<String>,
    /// Text put first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_prefix: Option<String>,
    /// Text put last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_suffix: Option<String>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
}

impl From<Template> for TemplateView {
    fn from(t: Template) -> Self {
        Self {
            scope: if t.owner.is_some() {
                Scope::User
            } else {
                Scope::Global
            },
            name: t.name,
            character: t.character,
            style: t.style,
            prompt_prefix: t.prompt_prefix,
            prompt_suffix: t.prompt_suffix,
            created_at: t.created_at,
        }
    }
}

/// A list of templates.
#[derive(Debug, Serialize)]
pub struct TemplateList {
    /// The caller's templates then the global ones, each by name.
    pub data: Vec<TemplateView>,
}

/// `POST /v1/templates`: `201` with the template; `409 conflict` if the caller has one of that
/// name already.
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    base: BaseUrl,
    JsonBody(body): JsonBody<NewTemplate>,
) -> Result<Response, ApiError> {
    let template = body.validate(Some(caller.user_id.clone()), state.clock.now())?;
    match state.store.insert_template(&template).await {
        Ok(()) => {}
        Err(StoreError::Conflict(_)) => {
            return Err(ApiError::Conflict(format!(
                "you already have a template named {:?}; delete it first",
                template.name
            )))
        }
        Err(e) => return Err(e.into()),
    }
    let location = base.absolute(&format!("/v1/templates/{}", template.name));
    let mut response = (StatusCode::CREATED, Json(TemplateView::from(template))).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(LOCATION, v);
    }
    Ok(response)
}

/// `GET /v1/templates`.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<TemplateList>, ApiError> {
    let mut data: Vec<TemplateView> = state
        .store
        .list_templates(Some(&caller.user_id))
        .await?
        .into_iter()
        .map(TemplateView::from)
        .collect();
    data.extend(
        state
            .store
            .list_templates(None)
            .await?
            .into_iter()
            .map(TemplateView::from),
    );
    Ok(Json(TemplateList { data }))
}

/// `GET /v1/templates/{name}`: the caller's template of that name, else the global one.
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<TemplateView>, ApiError> {
    templates::find(&*state.store, &caller.user_id, &name)
        .await?
        .map(|t| Json(t.into()))
        .ok_or(ApiError::NotFound("template"))
}

/// `DELETE /v1/templates/{name}`: `204`; only the caller's own templates can be deleted.
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    if state
        .store
        .delete_template(Some(&caller.user_id), &name)
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("template"))
    }
}
