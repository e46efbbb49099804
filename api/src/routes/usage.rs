//! `GET /v1/usage`: the caller's jobs, images, provider calls and cost by month and provider,
//! for cost analysis (the seed design logged every call for the same reason).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use kiln_shared::domain::JobStatus;
use kiln_shared::ports::ListQuery;
use serde::Serialize;

use super::ApiQuery;
use crate::{ApiError, AppState, Caller};

/// Jobs read per page while adding up.
const PAGE: usize = 100;
/// Most jobs added up in one answer; beyond it the answer says `truncated`.
const MAX_JOBS: usize = 20_000;

/// One month and provider.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct UsageRow {
    /// `YYYY-MM` (UTC) of the provider calls.
    pub month: String,
    /// Provider name.
    pub provider: String,
    /// Jobs this provider finished successfully.
    pub jobs: u64,
    /// Images it produced for them.
    pub images: u64,
    /// Calls made to it, failed ones included.
    pub calls: u64,
    /// Calls that failed.
    pub failed_calls: u64,
    /// What the calls cost, in US dollars.
    pub cost_usd: f64,
}

/// The answer of `GET /v1/usage`.
#[derive(Debug, Serialize)]
pub struct Usage {
    /// Rows, newest month first, then by provider.
    pub data: Vec<UsageRow>,
    /// Jobs by state, over every job counted.
    pub jobs_by_status: BTreeMap<String, u64>,
    /// Sum of `cost_usd` over the rows.
    pub total_cost_usd: f64,
    /// Whether there were more jobs than one answer adds up.
    pub truncated: bool,
}

/// `GET /v1/usage`: takes no parameters.
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<Vec<(String, String)>>,
) -> Result<Json<Usage>, ApiError> {
    if let Some((name, _)) = params.first() {
        return Err(ApiError::invalid(name, "is not a parameter of /v1/usage"));
    }
    let mut rows: BTreeMap<(String, String), UsageRow> = BTreeMap::new();
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    let mut cursor = None;
    let mut seen = 0usize;
    let truncated = loop {
        let page = state
            .store
            .list(
                &caller.user_id,
                &ListQuery {
                    status: None,
                    limit: PAGE,
                    cursor,
                },
            )
            .await?;
        for job in &page.jobs {
            *by_status.entry(job.status.as_str().to_owned()).or_default() += 1;
            for a in &job.attempts {
                let month = a.started_at.format("%Y-%m").to_string();
                let row = rows
                    .entry((month.clone(), a.provider.clone()))
                    .or_insert_with(|| UsageRow {
                        month,
                        provider: a.provider.clone(),
                        ..UsageRow::default()
                    });
                row.calls += 1;
                row.cost_usd += a.cost_usd;
                if a.outcome != "success" {
                    row.failed_calls += 1;
                }
            }
            if let (JobStatus::Success, Some(p)) = (job.status, &job.provider) {
                let month = job
                    .completed_at
                    .unwrap_or(job.created_at)
                    .format("%Y-%m")
                    .to_string();
                let row = rows
                    .entry((month.clone(), p.clone()))
                    .or_insert_with(|| UsageRow {
                        month,
                        provider: p.clone(),
                        ..UsageRow::default()
                    });
                row.jobs += 1;
                row.images += job.images.len() as u64;
            }
        }
        seen += page.jobs.len();
        match page.next {
            Some(next) if seen < MAX_JOBS => cursor = Some(next),
            Some(_) => break true,
            None => break false,
        }
    };
    let mut data: Vec<UsageRow> = rows.into_values().collect();
    data.sort_by(|a, b| {
        b.month
            .cmp(&a.month)
            .then_with(|| a.provider.cmp(&b.provider))
    });
    let total_cost_usd = data.iter().map(|r| r.cost_usd).sum();
    Ok(Json(Usage {
        data,
        jobs_by_status: by_status,
        total_cost_usd,
        truncated,
    }))
}
