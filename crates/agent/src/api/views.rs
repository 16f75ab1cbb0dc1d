//! Store records as the API shows them (`client::wire` types).

use client::wire::ReleaseNumber;
use client::wire::{DeploymentView, InstanceState, ProxyState, ProxyView, ReleaseView, TokenView};
use driver::InstanceStatus;
use proxy::ObservedInstanceState;

use crate::engine::{InstancePhase, RuntimeInstance};
use crate::proxy_link::{ProxyHealth, ProxyStatus};

use crate::store::{Deployment, Release, TokenRecord};

pub fn deployment_view(deployment: &Deployment) -> DeploymentView {
    DeploymentView {
        id: deployment.id.clone(),
        app: deployment.app.clone(),
        environment: deployment.environment.clone(),
        kind: deployment.kind,
        state: deployment.state,
        from_release: deployment.from_release,
        to_release: deployment.to_release,
        strategy: deployment.strategy,
        reason: deployment.reason.clone(),
        created_by: deployment.created_by.clone(),
        created_at: deployment.created_at,
        updated_at: deployment.updated_at,
    }
}

pub fn release_view(release: &Release, current: Option<ReleaseNumber>) -> ReleaseView {
    ReleaseView {
        number: release.number,
        artifact: release.artifact.clone(),
        strategy: release.strategy,
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

/// An instance's real state: the driver says whether it runs, the proxy whether it drains, the agent
/// where it is in its life and whether the watch took it out.
pub fn instance_state(
    instance: &RuntimeInstance,
    release_has_traffic: bool,
    in_proxy: Option<ObservedInstanceState>,
    driver: InstanceStatus,
) -> InstanceState {
    match driver {
        InstanceStatus::Restarting { .. } => return InstanceState::Crashed,
        InstanceStatus::Stopped { .. } => return InstanceState::Stopped,
        InstanceStatus::Running { .. } | InstanceStatus::Unknown => {}
    }
    if matches!(
        in_proxy,
        Some(ObservedInstanceState::Draining | ObservedInstanceState::Drained)
    ) {
        return InstanceState::Draining;
    }
    match instance.phase {
        InstancePhase::Starting => InstanceState::Starting,
        InstancePhase::Warm => InstanceState::Warm,
        InstancePhase::Ready if instance.unhealthy => InstanceState::OutOfTraffic,
        InstancePhase::Ready if release_has_traffic => InstanceState::Serving,
        InstancePhase::Ready => InstanceState::Healthy,
    }
}

pub fn proxy_view(status: &ProxyStatus) -> ProxyView {
    ProxyView {
        state: match status.health {
            ProxyHealth::Serving => ProxyState::Serving,
            ProxyHealth::Restarting => ProxyState::Restarting,
            ProxyHealth::Down => ProxyState::Down,
        },
        pid: status.pid,
        listen: status.listen.to_string(),
        restarts: status.restarts,
        last_exit: status.last_exit.clone(),
        holds_listeners: status.holds_listeners,
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
