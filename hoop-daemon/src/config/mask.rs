//! `[connection.mask]` as written in the config; `policy::mask` compiles
//! it.
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskConfig {
    /// JSONPath expressions whose values are masked.
    #[serde(default)]
    pub json: Vec<String>,
    /// Built-in detectors run over every string and text body.
    #[serde(default)]
    pub detectors: Vec<String>,
    #[serde(default)]
    pub custom: Vec<CustomDetector>,
    /// Card numbers keep this many trailing digits.
    #[serde(default)]
    pub keep_last: usize,
    /// Bodies are masked whole, up to this many bytes (decoded).
    #[serde(default = "default_max_body")]
    pub max_body: usize,
    /// Above `max_body`: `block` (502, the default) or `pass` (unmasked).
    #[serde(default)]
    pub over_limit: OverLimit,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomDetector {
    pub name: String,
    pub regex: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverLimit {
    #[default]
    Block,
    Pass,
}

fn default_max_body() -> usize {
    8 << 20
}
