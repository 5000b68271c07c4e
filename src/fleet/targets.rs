//! The fleet's targets: inline, from `targets_file`, or from
//! `targets_query` on a catalog database.

use std::collections::BTreeMap;
use std::path::Path;

use sqlx::{AssertSqlSafe, Row};

use crate::policy::{FleetTarget, Policy};
use crate::store::Fail;

/// The targets, checked (unique names, Postgres URLs) wherever they came
/// from; a problem is an invalid-input error naming where it is.
pub async fn resolve(policy: &Policy, policy_path: &Path) -> anyhow::Result<Vec<FleetTarget>> {
    if let Some(t) = policy
        .file_targets(policy_path)
        .map_err(|e| Fail::invalid(e.to_string()))?
    {
        return Ok(t);
    }
    let f = policy.fleet.clone().unwrap_or_default();
    let (Some(url), Some(query)) = (&f.catalog_url, &f.targets_query) else {
        return Err(Fail::invalid("fleet: names no target"));
    };
    let targets = query_targets(url, query).await?;
    policy
        .check_targets("fleet.targets_query", targets)
        .map_err(|e| Fail::invalid(e.to_string()))
}

/// Run the catalog query in a read-only transaction: it lists, it never
/// writes.
async fn query_targets(url: &str, query: &str) -> anyhow::Result<Vec<FleetTarget>> {
    let mut c = crate::store::connect(url, "pacer-fleet-catalog")
        .await
        .map_err(|e| Fail::failed(format!("fleet.catalog_url: {e:#}")))?;
    let mut tx = sqlx::Connection::begin(&mut c).await?;
    sqlx::query("SET TRANSACTION READ ONLY")
        .execute(&mut *tx)
        .await?;
    let rows = sqlx::query(AssertSqlSafe(query.to_string()))
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| Fail::invalid(format!("fleet.targets_query: {e}")))?;
    let _ = tx.rollback().await;
    let mut out = Vec::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        let col = |e: sqlx::Error| {
            Fail::invalid(format!(
                "fleet.targets_query: row {}: {e} (columns: name text, url text, optional replicas text[], labels jsonb)",
                i + 1
            ))
        };
        let has = |c: &str| r.columns().iter().any(|x| sqlx::Column::name(x) == c);
        let replicas: Vec<String> = if has("replicas") {
            r.try_get::<Option<Vec<String>>, _>("replicas")
                .map_err(col)?
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let labels: BTreeMap<String, String> = if has("labels") {
            match r
                .try_get::<Option<serde_json::Value>, _>("labels")
                .map_err(col)?
            {
                None => BTreeMap::new(),
                Some(v) => serde_json::from_value(v).map_err(|e| {
                    Fail::invalid(format!(
                        "fleet.targets_query: row {}: labels must be a JSON object of strings: {e}",
                        i + 1
                    ))
                })?,
            }
        } else {
            BTreeMap::new()
        };
        out.push(FleetTarget {
            name: r.try_get("name").map_err(col)?,
            url: r.try_get("url").map_err(col)?,
            replicas,
            labels,
        });
    }
    Ok(out)
}
