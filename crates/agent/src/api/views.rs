//! Store records as the API shows them (`client::wire` types).

use client::wire::{DeploymentView, EventView, ReleaseView, TokenView};

use crate::store::{Deployment, Event, Release, TokenRecord};

pub fn event_view(event: &Event) -> EventView {
    EventView {
        id: event.id,
        at: event.at,
        app: event.app.clone(),
        environment: event.environment.clone(),
        deployment_id: event.deployment_id.clone(),
        kind: event.kind.clone(),
        message: event.message.clone(),
        data: serde_json::from_str(&event.data_json).unwrap_or(serde_json::Value::Null),
    }
}

pub fn deployment_view(deployment: &Deployment) -> DeploymentView {
    DeploymentView {
        id: deployment.id.clone(),
        app: deployment.app.clone(),
        environment: deployment.environment.clone(),
        kind: deployment.kind.clone(),
        state: deployment.state.clone(),
        from_release: deployment.from_release,
        to_release: deployment.to_release,
        strategy: deployment.strategy.clone(),
        reason: deployment.reason.clone(),
        created_by: deployment.created_by.clone(),
        created_at: deployment.created_at,
        updated_at: deployment.updated_at,
    }
}

pub fn release_view(release: &Release, current: Option<u64>) -> ReleaseView {
    ReleaseView {
        number: release.number,
        artifact: release.artifact.clone(),
        strategy: release.strategy.clone(),
        created_by: release.created_by.clone(),
        created_at: release.created_at,
        outcome: release.outcome.to_string(),
        message: release.message.clone(),
        current: current == Some(release.number),
    }
}

pub fn token_view(token: &TokenRecord) -> TokenView {
    TokenView {
        id: token.id.clone(),
        name: token.name.clone(),
        role: token.role.to_string(),
        created_at: token.created_at,
        revoked: token.revoked_at.is_some(),
    }
}

pub fn isolation_view(isolation: &driver::Isolation) -> client::wire::IsolationView {
    use client::wire::IsolationView;
    match isolation {
        driver::Isolation::Users => IsolationView::Users,
        driver::Isolation::Landlock { abi, .. } => IsolationView::Landlock { abi: *abi },
        driver::Isolation::None { user, reason } => IsolationView::None {
            user: user.clone(),
            reason: reason.clone(),
        },
    }
}
