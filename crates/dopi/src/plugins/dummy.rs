//! `dummy` (and `noop`): succeed without doing anything; used for steps that only set plugin
//! defaults, and in tests.

use async_trait::async_trait;

use crate::plugin::{params, CommandContext, CommandOptions, CommandOutcome, ParamProblem, Plugin};

/// The do-nothing plugin.
pub struct Dummy {
    /// `dummy` or `noop`.
    pub name: &'static str,
}

#[async_trait]
impl Plugin for Dummy {
    fn name(&self) -> &'static str {
        self.name
    }

    fn check(&self, options: &CommandOptions) -> Vec<ParamProblem> {
        params::unknown_keys(options, &[])
    }

    fn describe(&self, _: &CommandOptions) -> String {
        "nothing (a dummy command succeeds)".to_string()
    }

    async fn run(&self, ctx: &CommandContext<'_>) -> CommandOutcome {
        ctx.log.line("running dummy command");
        CommandOutcome {
            success: true,
            ..CommandOutcome::default()
        }
    }
}
