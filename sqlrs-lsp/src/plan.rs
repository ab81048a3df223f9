//! An alias's plan as the editor shows it: Markdown for hovers, plain text
//! for messages, JSON for command replies.

use serde::Serialize;
use sqlrs_proto::pb::PlanReply;

use crate::status::SHORT_ID;

/// The plan as `sqlrs.showPlan` returns it.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PlanView {
    pub alias: String,
    pub base_id: String,
    pub engine: String,
    pub steps: Vec<StepView>,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StepView {
    pub index: u32,
    pub state_id: String,
    pub summary: String,
    pub cached: bool,
    pub inputs: Vec<String>,
}

impl PlanView {
    pub fn new(alias: &str, plan: PlanReply) -> Self {
        Self {
            alias: alias.to_owned(),
            base_id: plan.base_id,
            engine: plan.engine,
            steps: plan
                .steps
                .into_iter()
                .map(|s| StepView {
                    index: s.index,
                    state_id: s.state_id,
                    summary: s.summary,
                    cached: s.cached,
                    inputs: s.inputs,
                })
                .collect(),
        }
    }

    /// A Markdown table of the steps.
    pub fn markdown(&self) -> String {
        let mut text = format!(
            "**sqlrs plan: {}** ({})\n\n| step | state | cached | what |\n|---:|---|---|---|\n",
            self.alias, self.engine
        );
        for s in &self.steps {
            text.push_str(&format!(
                "| {} | `{}` | {} | {} |\n",
                s.index,
                short(&s.state_id),
                if s.cached { "yes" } else { "no" },
                s.summary.replace('|', "\\|")
            ));
        }
        text
    }

    /// One line per step.
    pub fn text(&self) -> String {
        let cached = self.steps.iter().filter(|s| s.cached).count();
        let mut text = format!(
            "{}: {} steps, {cached} cached ({})",
            self.alias,
            self.steps.len(),
            self.engine
        );
        for s in &self.steps {
            text.push_str(&format!(
                "\n{}. {} {} {}",
                s.index,
                short(&s.state_id),
                if s.cached { "cached" } else { "to build" },
                s.summary
            ));
        }
        text
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(SHORT_ID)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlrs_proto::pb::PlanStep;

    #[test]
    fn renderings() {
        let plan = PlanReply {
            base_id: "b".repeat(64),
            engine: "PostgreSQL 15.18".into(),
            steps: vec![
                PlanStep {
                    index: 1,
                    state_id: "0123456789abcdef".into(),
                    summary: "-f schema.sql".into(),
                    cached: true,
                    inputs: vec!["schema.sql".into()],
                },
                PlanStep {
                    index: 2,
                    state_id: "fedcba9876543210".into(),
                    summary: "-c select 1 | 2".into(),
                    cached: false,
                    inputs: vec![],
                },
            ],
        };
        let view = PlanView::new("db", plan);
        assert_eq!(
            view.markdown(),
            "**sqlrs plan: db** (PostgreSQL 15.18)\n\n\
             | step | state | cached | what |\n|---:|---|---|---|\n\
             | 1 | `0123456789ab` | yes | -f schema.sql |\n\
             | 2 | `fedcba987654` | no | -c select 1 \\| 2 |\n"
        );
        assert_eq!(
            view.text(),
            "db: 2 steps, 1 cached (PostgreSQL 15.18)\n\
             1. 0123456789ab cached -f schema.sql\n\
             2. fedcba987654 to build -c select 1 | 2"
        );
    }
}
