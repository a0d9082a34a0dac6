//! Embedding the worker with a rule hook of your own.
//!
//! Run it against the local RabbitMQ and PostgreSQL (the defaults):
//!
//! ```sh
//! cargo run --example custom_hook
//! ```
//!
//! Users whose events carry `"attributes": {"plan": "family"}` may hold four
//! sessions per app; users with `"plan": "trial"` are limited to one session
//! across all apps, and a newcomer is refused rather than evicting. The hook
//! runs where `limits.hooks` names it ("plan" below): first, so that rules,
//! superusers and operator overrides still have the last word.

use session_guard::domain::limits::{EvictionPolicy, HookContext, LimitsEditor, RuleHook};
use session_guard::{Settings, Worker, shutdown, telemetry};

/// Limits by subscription plan, read from the event's attributes.
struct PlanLimits;

impl RuleHook for PlanLimits {
    fn name(&self) -> &str {
        "plan"
    }

    fn apply(&self, ctx: &HookContext<'_>, limits: &mut LimitsEditor<'_>) {
        match ctx.attributes.get("plan").and_then(|v| v.as_str()) {
            Some("family") => limits.set_max_sessions(4),
            Some("trial") => {
                limits.set_max_sessions_global(1);
                limits.set_policy(EvictionPolicy::DenyNew);
            }
            _ => {}
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut settings = Settings::load(None)?;
    telemetry::init_logging(&settings.log)?;
    // Our hook first, then the built-ins, so that rules, superusers and
    // operator overrides have the last word.
    settings.limits.hooks = ["plan", "rules", "superuser_unlimited", "user_overrides"]
        .map(String::from)
        .to_vec();
    Worker::builder(settings)
        .hook(PlanLimits)
        .build()
        .await?
        .run(shutdown::signal())
        .await
}
