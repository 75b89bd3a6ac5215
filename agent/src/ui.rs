//! Wiring of the web UI (`corro-ui`): what the agent tells it beyond the
//! catalog (its health report, its templates), and its routes.

use std::sync::Arc;

use axum::Router;
use corro_templates::StatusBoard;
use corro_ui::{AgentHealth, AgentView, TemplateRow, UiConfig, UiState};
use tokio::sync::watch;

use crate::api::ApiState;
use crate::api::stats::{HealthParams, report};

struct View {
    api: ApiState,
    board: StatusBoard,
    /// The last report and when it was made: every open Overview asks once
    /// a second, and a report counts missing versions in the database.
    health: parking_lot::Mutex<Option<(std::time::Instant, AgentHealth)>>,
}

/// How long one health report serves every Overview.
const HEALTH_FRESH: std::time::Duration = std::time::Duration::from_millis(500);

impl View {
    fn report(&self) -> AgentHealth {
        let r = report(&self.api, &HealthParams::default());
        AgentHealth {
            status: r.status,
            reasons: r.reasons,
            actor_id: r.actor_id,
            head: r.head,
            missing_versions: r.missing_versions,
            behind: r.behind,
            last_sync_secs: r.last_sync_secs,
            replication_lag_secs: r.replication_lag_secs,
            broadcast_queue: r.broadcast_queue as u64,
        }
    }
}

impl AgentView for View {
    fn health(&self) -> AgentHealth {
        let mut cached = self.health.lock();
        if let Some((at, h)) = &*cached
            && at.elapsed() < HEALTH_FRESH
        {
            return h.clone();
        }
        let h = self.report();
        *cached = Some((std::time::Instant::now(), h.clone()));
        h
    }

    fn templates(&self) -> Vec<TemplateRow> {
        self.board
            .list()
            .into_iter()
            .map(|t| TemplateRow {
                source: t.source,
                destination: t.destination,
                last_render_ms: t.last_render_ms,
                last_error: t.last_error,
                waiting_for: t.waiting_for,
                renders: t.renders,
            })
            .collect()
    }

    fn templates_changed(&self) -> watch::Receiver<u64> {
        self.board.subscribe()
    }
}

/// The UI's routes over `api`'s catalog, or `None` when the agent has no
/// catalog (unit setups).
pub(crate) fn router(
    api: &ApiState,
    board: StatusBoard,
    cfg: &crate::config::UiConfig,
) -> Option<Router> {
    let discovery = api.discovery.clone()?;
    let view = Arc::new(View {
        api: api.clone(),
        board,
        health: parking_lot::Mutex::new(None),
    });
    let state = UiState::new(
        discovery.catalog.clone(),
        view,
        UiConfig {
            node_name: discovery.node.name.clone(),
            datacenter: discovery.node.datacenter.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            token: api.token.clone(),
            max_held: cfg.max_held.max(1),
        },
        api.stop.clone(),
    );
    Some(corro_ui::router(state))
}
