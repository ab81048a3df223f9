//! The client's settings (`initializationOptions`,
//! `workspace/didChangeConfiguration`).

use serde::Deserialize;
use serde_json::Value;

/// Rows kept per result set when the client sets no `rowLimit`.
pub const DEFAULT_ROW_LIMIT: usize = 500;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Settings {
    /// Alias name or path statements run against.
    pub default_alias: Option<String>,
    /// Run against this named instance instead of a fresh one.
    pub instance_name: Option<String>,
    pub row_limit: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            default_alias: None,
            instance_name: None,
            row_limit: DEFAULT_ROW_LIMIT,
        }
    }
}

impl Settings {
    /// Reads `{"settings": {"sqlrs": {…}}}`, `{"sqlrs": {…}}` or `{…}`;
    /// unknown keys are ignored, malformed values fall back to the defaults.
    pub fn from_json(value: &Value) -> Self {
        let inner = value
            .pointer("/settings/sqlrs")
            .or_else(|| value.get("sqlrs"))
            .unwrap_or(value);
        let mut settings: Settings = serde_json::from_value(inner.clone()).unwrap_or_default();
        settings.default_alias = settings.default_alias.filter(|s| !s.trim().is_empty());
        settings.instance_name = settings.instance_name.filter(|s| !s.trim().is_empty());
        settings
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shapes_table() {
        let db = Settings {
            default_alias: Some("db".into()),
            ..Settings::default()
        };
        let cases = [
            (json!(null), Settings::default()),
            (json!({}), Settings::default()),
            (json!({"defaultAlias": "db"}), db.clone()),
            (json!({"sqlrs": {"defaultAlias": "db"}}), db.clone()),
            (json!({"settings": {"sqlrs": {"defaultAlias": "db"}}}), db),
            (
                json!({"instanceName": "dev", "rowLimit": 3, "other": 1}),
                Settings {
                    instance_name: Some("dev".into()),
                    row_limit: 3,
                    ..Settings::default()
                },
            ),
            (
                json!({"defaultAlias": "", "instanceName": " "}),
                Settings::default(),
            ),
            (json!({"rowLimit": "many"}), Settings::default()),
        ];
        for (value, want) in cases {
            assert_eq!(Settings::from_json(&value), want, "{value}");
        }
    }
}
