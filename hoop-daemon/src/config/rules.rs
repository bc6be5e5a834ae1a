//! Guardrail and approval rules as written in the config (`deny`,
//! `approve`); `policy::rules` compiles them.
use std::collections::BTreeMap;

use serde::Deserialize;

/// A rule as written in the config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    /// One method or a list; empty: any.
    #[serde(default)]
    pub method: OneOrMany,
    /// Path glob, matched against the normalised path (no query).
    #[serde(default)]
    pub path: Option<String>,
    /// Query parameter → value glob; all must match.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Header → value glob; all must match.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Request body: `{ contains = "…" }` or `{ regex = "…" }` (raw
    /// bytes, and the decoded body), or `{ json = { "$.path" = ">= 1" } }`.
    #[serde(default)]
    pub body: Option<BodyConfig>,
    /// What the job is told.
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BodyConfig {
    #[serde(default)]
    pub contains: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
    /// JSONPath → condition, all of which must hold (see `fields.rs`).
    #[serde(default)]
    pub json: BTreeMap<String, String>,
}
